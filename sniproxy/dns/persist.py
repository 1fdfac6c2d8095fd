"""
The cache file: the DNS cache's entries saved across restarts, so that the
first connections after a deploy, an upgrade or a crash do not each pay a
cold lookup.

The file is JSON::

    {"format": "sniproxy-dns-cache", "version": 1, "saved": 1764590000.0,
     "entries": [{"name": "_dstack-app-address.shop.example.com", "type": 16,
                  "class": 1, "negative": null, "raw_ttl": 60, "fetched": 1764589990.5,
                  "auth": false, "hits": 12, "message": "<base64 DNS message>"}, ...]}

Entries come most recently used first.  C{message} is the answer, its
authority and additional sections in DNS wire format (the TTLs as they
arrived), so loading it goes through the same parser as an answer off the
network.  Times are the reactor's (Unix time), so an entry's expiry is
C{fetched} plus its (clamped) TTL, wherever and whenever it is loaded.

Saving writes a temporary file beside the target (mode 0600), fsyncs it
and renames it over the target: a crash leaves the old file or the new one,
never half of one.  Loading trusts the file no more than a DNS answer: the
file size is bounded (L{max_file_bytes}), names must be host names, types,
classes and times must be in range, each message must parse and be at most
65,535 bytes, and a file naming more than twice C{max_entries} entries is
refused.  Any problem means one warning naming the file and the reason, and
a cold start.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import tempfile
from typing import Any

from twisted.logger import Logger
from twisted.names import dns

from sniproxy.config import ConfigError, validate_hostname
from sniproxy.dns.cache import NODATA, NXDOMAIN, CachingResolver, SavedEntry

__all__ = [
    "CacheFileError",
    "FORMAT",
    "VERSION",
    "load_cache",
    "max_file_bytes",
    "read_cache_file",
    "save_cache",
    "write_cache_file",
]

log = Logger()

FORMAT = "sniproxy-dns-cache"
VERSION = 1

#: The largest DNS message (TCP's length prefix).
MAX_MESSAGE = 65535

#: Bytes per entry a file may hold on average (a TXT route is ~200).
BYTES_PER_ENTRY = 4096


class CacheFileError(Exception):
    """A cache file that cannot be used; C{str()} says why in a few words."""


def max_file_bytes(max_entries: int) -> int:
    """The largest cache file loaded for C{max_entries}."""
    return (1 << 20) + BYTES_PER_ENTRY * max_entries


def _encode(entry: SavedEntry) -> dict[str, Any]:
    message = dns.Message(answer=1, auth=int(entry.auth))
    message.answers = list(entry.records)
    message.authority = list(entry.authority)
    message.additional = list(entry.additional)
    return {
        "name": entry.name,
        "type": entry.type,
        "class": entry.cls,
        "negative": entry.negative,
        "raw_ttl": None if math.isinf(entry.raw_ttl) else entry.raw_ttl,
        "fetched": entry.fetched,
        "auth": entry.auth,
        "hits": entry.hits,
        "message": base64.b64encode(message.toStr()).decode("ascii"),
    }


def save_cache(resolver: CachingResolver, path: str, now: float) -> int:
    """
    Write the cache's entries to C{path}, atomically, mode 0600 (see
    L{write_cache_file}).

    @param now: the time to record as C{saved}.
    @return: how many entries were written.
    @raise OSError: when the file cannot be written (the old one stays).
    """
    return write_cache_file(list(resolver.saved_entries()), path, now)


def write_cache_file(entries: list[SavedEntry], path: str, now: float) -> int:
    """
    Write C{entries} (from L{CachingResolver.saved_entries}) to C{path}:
    a temporary file beside it (mode 0600), fsync, rename, fsync of the
    directory.  Safe to call from a thread: it only reads the entries.

    @return: how many entries were written.
    @raise OSError: when the file cannot be written (the old one stays).
    """
    encoded = [_encode(entry) for entry in entries]
    data = json.dumps(
        {"format": FORMAT, "version": VERSION, "saved": now, "entries": encoded}, separators=(",", ":")
    ).encode("ascii")
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".dns-cache.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    try:
        # The rename itself survives a crash once the directory is synced.
        dirfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    except OSError:
        pass
    return len(encoded)


def _field(item: dict[str, Any], name: str, kinds: Any, where: str) -> Any:
    value = item.get(name)
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise CacheFileError(f"{where}: {name} is not valid")
    if not isinstance(value, kinds):
        raise CacheFileError(f"{where}: {name} is missing or not valid")
    return value


def _time(value: Any, name: str, where: str) -> float:
    # An int too large for a float (JSON has no bound) is as bad as inf.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -(2**53) < value < 2**53:
        raise CacheFileError(f"{where}: {name} is not a finite number")
    if not math.isfinite(value):
        raise CacheFileError(f"{where}: {name} is not a finite number")
    return float(value)


def _decode(item: Any, index: int) -> SavedEntry:
    where = f"entry {index}"
    if not isinstance(item, dict):
        raise CacheFileError(f"{where} is not an object")
    name = _field(item, "name", str, where)
    try:
        if name != validate_hostname(name):
            raise ValueError(name)
    except (ConfigError, ValueError, UnicodeError):
        raise CacheFileError(f"{where}: {name[:80]!r} is not a valid host name") from None
    kind = _field(item, "type", int, where)
    cls = _field(item, "class", int, where)
    if not (0 < kind < 65536 and 0 < cls < 65536):
        raise CacheFileError(f"{where}: type or class out of range")
    negative = item.get("negative")
    if negative not in (None, NXDOMAIN, NODATA):
        raise CacheFileError(f"{where}: negative is not valid")
    raw = item.get("raw_ttl")
    if raw is None:
        if negative is None:
            raise CacheFileError(f"{where}: raw_ttl is missing")
        raw_ttl = math.inf
    else:
        raw_ttl = _time(raw, "raw_ttl", where)
        if not 0 <= raw_ttl <= 2**31:
            raise CacheFileError(f"{where}: raw_ttl out of range")
    fetched = _time(item.get("fetched"), "fetched", where)
    auth = _field(item, "auth", bool, where)
    hits = _field(item, "hits", int, where)
    if hits < 0:
        raise CacheFileError(f"{where}: hits out of range")
    text = _field(item, "message", str, where)
    if len(text) > (MAX_MESSAGE * 4) // 3 + 4:
        raise CacheFileError(f"{where}: message too large")
    try:
        wire = base64.b64decode(text, validate=True)
        message = dns.Message()
        message.fromStr(wire)
    except (binascii.Error, ValueError):
        raise CacheFileError(f"{where}: message is not base64") from None
    except Exception as error:
        raise CacheFileError(f"{where}: message does not parse ({type(error).__name__})") from None
    if len(wire) > MAX_MESSAGE:
        raise CacheFileError(f"{where}: message too large")
    if negative is None and not any(r.type == kind or kind == dns.ALL_RECORDS for r in message.answers):
        raise CacheFileError(f"{where}: a positive entry without a record of its type")
    return SavedEntry(
        name,
        kind,
        cls,
        tuple(message.answers),
        tuple(message.authority),
        tuple(message.additional),
        negative,
        raw_ttl,
        fetched,
        auth,
        hits,
    )


def read_cache_file(path: str, max_entries: int) -> list[SavedEntry]:
    """
    The entries in the cache file at C{path}, most recently used first.

    @raise CacheFileError: for a file that is missing, unreadable, too
        large, truncated or corrupt, of another format or version, or one
        that names more than twice C{max_entries} entries.
    """
    limit = max_file_bytes(max_entries)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise CacheFileError("no such file") from None
    except OSError as error:
        raise CacheFileError(f"cannot read it: {error.strerror or error}") from None
    if len(data) > limit:
        raise CacheFileError(f"larger than {limit} bytes (dns.max_entries = {max_entries})")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise CacheFileError(f"not valid JSON (truncated or corrupt): {str(error)[:80]}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CacheFileError("not a sniproxy DNS cache file")
    if document.get("version") != VERSION:
        raise CacheFileError(f"version {str(document.get('version'))[:20]} is not {VERSION}")
    items = document.get("entries")
    if not isinstance(items, list):
        raise CacheFileError("entries is not a list")
    if len(items) > 2 * max_entries:
        raise CacheFileError(f"names {len(items)} entries, more than twice dns.max_entries ({max_entries})")
    return [_decode(item, index) for index, item in enumerate(items)]


def load_cache(resolver: CachingResolver, path: str, max_entries: int) -> int:
    """
    Load the cache file at C{path} into C{resolver} (see L{read_cache_file}
    and L{CachingResolver.restore}).  A bad file gives one warning naming
    it and the reason, and nothing is loaded.

    @return: how many entries were loaded.
    """
    try:
        saved = read_cache_file(path, max_entries)
    except CacheFileError as error:
        log.warn("DNS cache file {path}: {reason}; starting with an empty cache", path=path, reason=str(error))
        return 0
    except Exception as error:
        # The file is outside input: whatever it holds, the proxy starts.
        log.warn(
            "DNS cache file {path}: unreadable ({kind}); starting with an empty cache",
            path=path,
            kind=type(error).__name__,
        )
        return 0
    loaded = resolver.restore(saved)
    log.info("DNS cache file {path}: loaded {loaded} of {total} entries", path=path, loaded=loaded, total=len(saved))
    return loaded

