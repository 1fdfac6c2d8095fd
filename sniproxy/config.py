"""
The config file: TOML in, frozen dataclasses out.

Everything is validated before anything is used, so a start or a reload
either gets a whole, consistent L{Config} or one L{ConfigError} whose message
names the key and the problem (C{proxy.hello_timeout: expected a number,
got 'soon'}).  Unknown keys are errors too: a typo must not silently become
a default.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import math
import tomllib
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable, Mapping

from twisted.internet.interfaces import IReactorCore

from sniproxy.hostnames import host_name_problem
from sniproxy.interfaces import Address

__all__ = [
    "AdminConfig",
    "AppConfig",
    "Config",
    "ConfigError",
    "DNSConfig",
    "LogConfig",
    "SECTIONS",
    "ProxyConfig",
    "RoutingConfig",
    "StaticTarget",
    "SubdomainConfig",
    "SubdomainPolicy",
    "SystemConfig",
    "TXTConfig",
    "check_endpoint",
    "load_config",
    "parse_address",
    "parse_config",
    "validate_hostname",
]

SOURCES = ("static", "subdomain", "txt", "system")


class ConfigError(Exception):
    """
    The config is unusable.  C{str(error)} is one line naming the key (or
    the file) and the problem.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


# ---------------------------------------------------------------- value types


class SubdomainPolicy(str, enum.Enum):
    """What the subdomain source does with a name whose port has no C{s}."""

    REJECT = "reject"
    PASSTHROUGH = "passthrough"


@dataclass(frozen=True, slots=True)
class StaticTarget:
    """
    The right-hand side of a C{[routing.static]} entry: a fixed address, or
    an app from the registry on a port.

    @ivar address: the backend (written C{"host:port"} or as C{backend}),
        or C{None} when the entry names an app.
    @ivar app: the app id (C{app = "..."}), or C{None}.
    @ivar port: with C{app}: the port to connect to on the app's instances
        that give none of their own.
    @ivar proxy_protocol: 0, or the PROXY protocol version (1 or 2) to send
        the backend; with an app, 0 means the app's own setting.
    """

    address: Address | None = None
    app: str | None = None
    port: int = 443
    proxy_protocol: int = 0


@dataclass(frozen=True, slots=True)
class AppBackend:
    """
    An app instance, as C{"host"} or C{"host:port"} in C{backends}.

    @ivar host: an IP literal or a host name (resolved through the DNS
        layer at connect time).
    @ivar port: the instance's port, or C{None} for "the port the route
        asks for".
    """

    host: str
    port: int | None = None


@dataclass(frozen=True, slots=True)
class AppConfig:
    """
    One C{[apps.<id>]} table: an app that routes may name.

    @ivar backends: the app's instances, in order (at least one).
    @ivar proxy_protocol: 0, or the PROXY protocol version (1 or 2) its
        instances expect.
    @ivar balance: how the next connection picks an instance:
        C{"least-connections"}, C{"first"} (config-order failover) or
        C{"random"}.
    @ivar max_connections: live connections to this app at most; 0 = no limit.
    """

    backends: tuple[AppBackend, ...]
    proxy_protocol: int = 0
    balance: str = "least-connections"
    max_connections: int = 0


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """
    The C{[proxy]} table: listening, timeouts, limits.

    @ivar listen: the endpoint strings to accept TLS clients on (Twisted
        endpoint syntax: C{tcp:443}, C{systemd:domain=INET:index=0}).
    @ivar hello_timeout: seconds a client has to send its whole ClientHello.
    @ivar max_hello_bytes: the largest ClientHello accepted (512 to 16 MiB);
        a larger one gets C{illegal_parameter}.
    @ivar routing_timeout: seconds the routing decision may take.
    @ivar connect_timeout: seconds to connect to a backend, across all its
        addresses.
    @ivar connect_stagger: seconds each address gets before the next is
        tried too (RFC 8305 style).
    @ivar idle_timeout: seconds a relayed connection may pass with no byte
        either way.
    @ivar shutdown_timeout: seconds live connections get to finish at a
        stop before they are closed.
    @ivar fallback: the backend (C{"host:port"}) for names no source
        routes, or none (C{""}).
    @ivar fallback_proxy_protocol: the PROXY protocol version (0, 1, 2) for
        the fallback backend.
    @ivar max_connections: connections open at once (0 = no limit); more
        are closed at accept.
    @ivar max_connections_per_client: connections open at once from one
        client address (0 = no limit); trusted load balancers are exempt.
    @ivar max_pending_per_name: connections that may wait for one name's
        routing answer at once (0 = no limit).
    @ivar accept_proxy_from: CIDR networks whose connections must start
        with a PROXY protocol header (v1 or v2) naming the real client.
    @ivar splice: relay with splice(2) on Linux, so bytes never enter the
        process.
    @ivar max_lifetime: seconds a relayed connection may live, counted from
        accept (0 = no limit); checked about once a second, and a reload's
        value applies to connections already open.
    @ivar allow_clients: client networks (CIDR) let in; empty = everyone.
    @ivar deny_clients: client networks refused at once; wins over allow_clients.
    @ivar eject_base: seconds an app instance is skipped after its first failed connect.
    @ivar eject_max: the longest back-off (it doubles with each failed probe).
    @ivar workers: worker processes that accept and relay (1 = the main
        process does, as always; 0 = one per CPU core; at most 256).
    """

    listen: tuple[str, ...] = ("tcp:8443:interface=127.0.0.1",)
    hello_timeout: float = 5.0
    max_hello_bytes: int = 65536
    routing_timeout: float = 5.0
    connect_timeout: float = 5.0
    connect_stagger: float = 0.25
    idle_timeout: float = 600.0
    shutdown_timeout: float = 10.0
    fallback: Address | None = None
    fallback_proxy_protocol: int = 0
    max_connections: int = 10000
    max_connections_per_client: int = 256
    max_pending_per_name: int = 1000
    accept_proxy_from: tuple[str, ...] = ()
    splice: bool = True
    max_lifetime: float = 0.0
    allow_clients: tuple[str, ...] = ()
    deny_clients: tuple[str, ...] = ()
    eject_base: float = 1.0
    eject_max: float = 30.0
    workers: int = 1


@dataclass(frozen=True, slots=True)
class SubdomainConfig:
    """
    The C{[routing.subdomain]} table: dstack-style C{<app>[-<port>[s]].<base>}
    names.

    @ivar base_domains: the domains whose subdomains name apps.
    @ivar non_passthrough: C{"reject"} or C{"passthrough"}: what to do
        with a port written without C{s} (a TLS-terminating port, which a
        passthrough proxy cannot serve).
    """

    base_domains: tuple[str, ...] = ()
    non_passthrough: SubdomainPolicy = SubdomainPolicy.REJECT


@dataclass(frozen=True, slots=True)
class TXTConfig:
    """
    The C{[routing.txt]} table: owner-name prefixes of the TXT records that
    name an app (C{<prefix>.<server name>} = C{"<app>:<port>"}).

    @ivar prefix: the primary prefix.
    @ivar legacy_prefix: an older prefix tried after it (C{""} = none).
    @ivar wildcard_prefix: the prefix of records that cover every name
        under a domain (C{""} = none).
    """

    prefix: str = "_dstack-app-address"
    legacy_prefix: str = "_tapp-address"
    wildcard_prefix: str = "_dstack-app-address-wildcard"


@dataclass(frozen=True, slots=True)
class SystemConfig:
    """
    The C{[routing.system]} table: allowed names connected to their own
    addresses, as the system resolver (getaddrinfo) gives them.

    @ivar allow: the names and C{*.suffix} patterns that may be looked up.
    @ivar port: the port to connect to.
    @ivar allow_private: allow private, loopback and link-local addresses.
    @ivar timeout: seconds one lookup may take.
    @ivar threads: threads for getaddrinfo (takes effect at a restart).
    @ivar max_queued: lookups that may wait for a thread; more are refused.
    """

    allow: tuple[str, ...] = ()
    port: int = 443
    allow_private: bool = False
    timeout: float = 2.0
    threads: int = 4
    max_queued: int = 64


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """
    The C{[routing]} table.

    @ivar sources: the route sources to ask, in order (C{static},
        C{subdomain}, C{txt}, C{system}).
    @ivar static: the C{[routing.static]} map, pattern to target.
    @ivar subdomain: the C{[routing.subdomain]} table.
    @ivar txt: the C{[routing.txt]} table.
    @ivar system: the C{[routing.system]} table.
    """

    sources: tuple[str, ...] = ("static",)
    static: Mapping[str, StaticTarget] = field(default_factory=dict)
    subdomain: SubdomainConfig = SubdomainConfig()
    txt: TXTConfig = TXTConfig()
    system: SystemConfig = SystemConfig()


@dataclass(frozen=True, slots=True)
class DNSConfig:
    """
    The C{[dns]} table: the caching DNS layer and its upstream.

    @ivar servers: upstream servers (C{"ip"} or C{"ip:port"}); empty means
        those of C{resolv_conf}.
    @ivar resolv_conf: the file to read servers from when C{servers} is
        empty.
    @ivar timeout: seconds to wait for one server's answer.
    @ivar attempts: tries per server.
    @ivar deadline: seconds one lookup may take in all.
    @ivar min_ttl: the least TTL an answer is cached for.
    @ivar max_ttl: the most TTL an answer is cached for.
    @ivar max_negative_ttl: the most an NXDOMAIN or NODATA answer is cached
        for.
    @ivar failure_backoff: seconds a failed name is not asked again.
    @ivar max_stale: seconds past its TTL an entry may be served stale
        while upstream fails (RFC 8767).
    @ivar stale_wait: seconds a lookup waits for upstream before a stale
        answer is served.
    @ivar refresh_ahead: the fraction of a TTL before expiry at which a used
        entry is refreshed in the background (0 to 1).
    @ivar max_entries: the cache's size bound (least recently used out).
    @ivar prefetch: names resolved at start-up and reload.
    @ivar min_refresh: the soonest, in seconds after an answer arrived,
        that it is refreshed: a TTL 0 answer is kept and served (stale)
        this long instead of a query per connection (0 = no floor).
    @ivar cache_file: where the cache is saved and loaded across restarts;
        C{""} = off.
    @ivar cache_save_interval: seconds between saves of C{cache_file} (it
        is also saved at a graceful stop).
    """

    servers: tuple[tuple[str, int], ...] = ()
    resolv_conf: str = "/etc/resolv.conf"
    timeout: float = 1.0
    attempts: int = 2
    deadline: float = 3.0
    min_ttl: float = 0.0
    max_ttl: float = 86400.0
    max_negative_ttl: float = 10.0
    failure_backoff: float = 2.0
    max_stale: float = 86400.0
    stale_wait: float = 0.0
    refresh_ahead: float = 0.1
    max_entries: int = 10000
    prefetch: tuple[str, ...] = ()
    min_refresh: float = 1.0
    cache_file: str = ""
    cache_save_interval: float = 60.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    """
    The C{[log]} table.

    @ivar access: the access log: a file path, C{"-"} for standard output,
        C{""} for none.
    """

    access: str = "-"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """
    The C{[admin]} table.

    @ivar listen: the endpoint string of the admin HTTP endpoint (metrics,
        route explanations), or C{""} for none.
    """

    listen: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    """
    A whole, validated config file.

    @ivar proxy: the C{[proxy]} table.
    @ivar routing: the C{[routing]} table and its subtables.
    @ivar apps: the C{[apps.<id>]} tables, by app id.
    @ivar dns: the C{[dns]} table.
    @ivar log: the C{[log]} table.
    @ivar admin: the C{[admin]} table.
    @ivar path: the file it was read from (C{""} when parsed from data).
    """

    proxy: ProxyConfig = ProxyConfig()
    routing: RoutingConfig = RoutingConfig()
    apps: Mapping[str, AppConfig] = field(default_factory=dict)
    dns: DNSConfig = DNSConfig()
    log: LogConfig = LogConfig()
    admin: AdminConfig = AdminConfig()
    path: str = ""


# Which dataclass documents which TOML table (C{"apps.*"}: every
# C{[apps.<id>]} table; C{"routing.static.*"}: a table-valued entry).
SECTIONS: dict[str, type] = {
    "proxy": ProxyConfig,
    "routing": RoutingConfig,
    "routing.static.*": StaticTarget,
    "routing.subdomain": SubdomainConfig,
    "routing.txt": TXTConfig,
    "routing.system": SystemConfig,
    "apps.*": AppConfig,
    "dns": DNSConfig,
    "log": LogConfig,
    "admin": AdminConfig,
}


def _default(cls: type, name: str) -> Any:
    """The default of field C{name} of dataclass C{cls}: the parser's only source of defaults."""
    spec = cls.__dataclass_fields__[name]
    if spec.default_factory is not MISSING:
        return spec.default_factory()
    return spec.default


# ---------------------------------------------------------------- primitives


def _describe(value: object) -> str:
    kind = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} {text}"


def validate_hostname(name: str) -> str:
    """
    Normalise a DNS host name (lower case, one trailing dot stripped) and
    check it by the one host-name rule, L{sniproxy.hostnames.host_name_problem}
    (the one SNI is checked by): labels of 1-63 letters, digits, hyphens and
    underscores, not starting or ending with a hyphen, 253 characters at
    most.

    @raise ValueError: with the reason, when the name is not valid.
    """
    if not isinstance(name, str):
        raise ValueError("not a string")
    if not name.isascii():
        # Before lower(): it maps some non-ASCII letters (the Kelvin sign) to ASCII.
        raise ValueError(f"{name!r} is not ASCII (write an IDN as its xn-- A-label)")
    if name.endswith("."):
        name = name[:-1]
    name = name.lower()
    problem = host_name_problem(name.encode("ascii"))
    if problem is not None:
        raise ValueError(problem)
    return name


def validate_pattern(pattern: str) -> str:
    """
    Normalise a name pattern: an exact host name, or C{*.suffix} (the
    wildcard stands for one or more labels).

    @raise ValueError: when it is neither.
    """
    if pattern.startswith("*."):
        return "*." + validate_hostname(pattern[2:])
    if "*" in pattern:
        raise ValueError("a wildcard must be the whole first label, as in '*.example.com'")
    return validate_hostname(pattern)


def parse_address(text: str, default_port: int | None = None) -> tuple[str, int | None]:
    """
    Split C{host:port}, C{[v6]:port}, a bare IP literal or a bare host name.

    @return: C{(host, port)}; C{port} is C{default_port} when absent.
    @raise ValueError: on a bad host or port.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("expected 'host:port'")
    host: str
    port_text: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {text!r}")
        host = text[1:end]
        rest = text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected ':port' after ']' in {text!r}")
            port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif text.count(":") > 1:
        # A bare IPv6 literal: no port can follow without brackets.
        try:
            host = str(ipaddress.IPv6Address(text))
        except ValueError:
            raise ValueError(f"{text!r} is not host:port (bracket IPv6 addresses)") from None
    else:
        host, sep, port_text = text.partition(":")
        if not sep:
            port_text = None
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            host = validate_hostname(host)
    if port_text is None:
        port = default_port
    else:
        if not port_text.isdigit():
            raise ValueError(f"port {port_text!r} is not a number")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is outside 1-65535")
    return host, port


def parse_backend(text: str) -> Address:
    """Parse a C{host:port} target whose port is required."""
    host, port = parse_address(text)
    if port is None:
        raise ValueError(f"{text!r} has no port (expected 'host:port')")
    return Address(host, port)


def _key_part(name: str, quote: bool = False) -> str:
    """
    A key for a message: as written, unless it is empty or holds spaces,
    quotes or unprintable characters (a newline would break the one-line
    message), or C{quote} is set; then quoted, with escapes.
    """
    if quote or not name or not name.isprintable() or any(c in ' "\\' for c in name):
        return json.dumps(name)
    return name


class _Table:
    """Reads one TOML table, naming every key it rejects by its full path."""

    def __init__(self, path: str, data: object) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, f"expected a table, got {_describe(data)}")
        self.path = path
        self.data = data
        self.seen: set[str] = set()

    def key(self, name: str, quote: bool = False) -> str:
        part = _key_part(name, quote)
        return f"{self.path}.{part}" if self.path else part

    def get(self, name: str, default: Any, check: Callable[[str, Any], Any]) -> Any:
        self.seen.add(name)
        if name not in self.data:
            return default
        return check(self.key(name), self.data[name])

    def table(self, name: str) -> _Table:
        self.seen.add(name)
        return _Table(self.key(name), self.data.get(name, {}))

    def done(self) -> None:
        for name in self.data:
            if name not in self.seen:
                raise ConfigError(self.key(name), "unknown key")


def _number(minimum: float = 0.0, maximum: float = math.inf, above: bool = False):
    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:  # a TOML integer of hundreds of digits
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(key, f"must be a finite number, got {_describe(value)}")
        if number < minimum or number > maximum or (above and number == minimum):
            bound = f"above {minimum:g}" if above else f"at least {minimum:g}"
            if maximum != math.inf:
                bound += f" and at most {maximum:g}"
            raise ConfigError(key, f"must be {bound}, got {value!r}")
        return number

    return check


def _integer(minimum: int = 0, maximum: int | None = None):
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {_describe(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"at least {minimum}" + (f" and at most {maximum}" if maximum is not None else "")
            raise ConfigError(key, f"must be {bound}, got {value}")
        return value

    return check


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {_describe(value)}")
    return value


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {_describe(value)}")
    return value


def _choice(*choices: str):
    def check(key: str, value: Any) -> str:
        value = _string(key, value)
        if value not in choices:
            raise ConfigError(key, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    return check


def _list(item: Callable[[str, Any], Any]):
    def check(key: str, value: Any) -> tuple:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {_describe(value)}")
        return tuple(item(f"{key}[{index}]", element) for index, element in enumerate(value))

    return check


def _via(parse: Callable[[str], Any]):
    """Adapt a C{str -> value} parser raising ValueError to a key checker."""

    def check(key: str, value: Any) -> Any:
        try:
            return parse(_string(key, value))
        except ValueError as error:
            raise ConfigError(key, str(error)) from None

    return check


def check_endpoint(key: str, value: Any, reactor: IReactorCore | None = None) -> str:
    """
    Check a server endpoint string by parsing it as a start would.

    @param reactor: the reactor the endpoint would listen with, or C{None}
        (parsing never uses it).
    @raise ConfigError: naming C{key} when it does not parse.
    """
    from twisted.internet import endpoints

    value = _string(key, value)
    try:
        # Parsing builds the endpoint object without binding anything, so
        # this checks the plugin name and its arguments only.
        endpoints.serverFromString(reactor, value)
    except IndexError:
        if value.startswith("systemd:"):
            raise ConfigError(key, f"bad endpoint {value!r}: systemd passed no socket at that index") from None
        raise ConfigError(key, f"bad endpoint {value!r}") from None
    except Exception as error:
        raise ConfigError(key, f"bad endpoint {value!r}: {error}") from None
    return value


_endpoint = check_endpoint


def _network(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


def _proxy_protocol(key: str, value: Any) -> int:
    return _choice_int(key, value, (0, 1, 2))


def _choice_int(key: str, value: Any, choices: tuple[int, ...]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in choices:
        raise ConfigError(key, f"expected one of {', '.join(map(str, choices))}, got {_describe(value)}")
    return value


def _dns_server(text: str) -> tuple[str, int]:
    host, port = parse_address(text, 53)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (a DNS server cannot be a name)") from None
    assert port is not None
    return host, port


# ---------------------------------------------------------------- tables


def _proxy(table: _Table) -> ProxyConfig:
    default = ProxyConfig()
    positive = _number(above=True)
    fallback = table.get("fallback", "", _string)
    try:
        fallback_address = parse_backend(fallback) if fallback else None
    except ValueError as error:
        raise ConfigError(table.key("fallback"), str(error)) from None
    config = ProxyConfig(
        listen=table.get("listen", default.listen, _list(_endpoint)),
        hello_timeout=table.get("hello_timeout", default.hello_timeout, positive),
        max_hello_bytes=table.get("max_hello_bytes", default.max_hello_bytes, _integer(512, 16 * 1024 * 1024)),
        routing_timeout=table.get("routing_timeout", default.routing_timeout, positive),
        connect_timeout=table.get("connect_timeout", default.connect_timeout, positive),
        connect_stagger=table.get("connect_stagger", default.connect_stagger, _number()),
        idle_timeout=table.get("idle_timeout", default.idle_timeout, positive),
        shutdown_timeout=table.get("shutdown_timeout", default.shutdown_timeout, _number()),
        fallback=fallback_address,
        fallback_proxy_protocol=table.get("fallback_proxy_protocol", default.fallback_proxy_protocol, _proxy_protocol),
        max_connections=table.get("max_connections", default.max_connections, _integer(0)),
        max_connections_per_client=table.get(
            "max_connections_per_client", default.max_connections_per_client, _integer(0)
        ),
        max_pending_per_name=table.get("max_pending_per_name", default.max_pending_per_name, _integer(0)),
        accept_proxy_from=table.get("accept_proxy_from", default.accept_proxy_from, _list(_via(_network))),
        splice=table.get("splice", default.splice, _boolean),
        max_lifetime=table.get("max_lifetime", default.max_lifetime, _number()),
        allow_clients=table.get("allow_clients", default.allow_clients, _list(_via(_network))),
        deny_clients=table.get("deny_clients", default.deny_clients, _list(_via(_network))),
        eject_base=table.get("eject_base", default.eject_base, positive),
        eject_max=table.get("eject_max", default.eject_max, positive),
        workers=table.get("workers", default.workers, _integer(0, 256)),
    )
    table.done()
    if config.eject_max < config.eject_base:
        raise ConfigError(table.key("eject_max"), f"must be at least proxy.eject_base ({config.eject_base:g}), got {config.eject_max:g}")
    if not config.listen:
        raise ConfigError(table.key("listen"), "needs at least one endpoint")
    return config


def _static_target(key: str, value: Any) -> StaticTarget:
    if isinstance(value, str):
        try:
            return StaticTarget(address=parse_backend(value))
        except ValueError as error:
            raise ConfigError(key, str(error)) from None
    target = _Table(key, value)
    backend = target.get("backend", None, _via(parse_backend))
    app = target.get("app", None, _via(validate_hostname))
    port = target.get("port", _default(StaticTarget, "port"), _integer(1, 65535))
    proxy_protocol = target.get("proxy_protocol", _default(StaticTarget, "proxy_protocol"), _proxy_protocol)
    target.done()
    if (backend is None) == (app is None):
        raise ConfigError(key, "needs exactly one of 'backend' (\"host:port\") or 'app'")
    if backend is not None and "port" in target.data:
        raise ConfigError(f"{key}.port", "only goes with 'app' (put the port in 'backend')")
    return StaticTarget(address=backend, app=app, port=port, proxy_protocol=proxy_protocol)


def _routing(table: _Table) -> RoutingConfig:
    sources = table.get("sources", _default(RoutingConfig, "sources"), _list(_choice(*SOURCES)))
    if len(set(sources)) != len(sources):
        raise ConfigError(table.key("sources"), "names a source twice")

    static_table = table.table("static")
    static: dict[str, StaticTarget] = {}
    for pattern, value in static_table.data.items():
        key = static_table.key(pattern, quote=True)
        try:
            normal = validate_pattern(pattern)
        except ValueError as error:
            raise ConfigError(key, f"bad name pattern: {error}") from None
        if normal in static:
            raise ConfigError(key, f"repeats the pattern {normal!r}")
        static[normal] = _static_target(key, value)
        static_table.seen.add(pattern)
    static_table.done()

    sub = table.table("subdomain")
    default_sub = SubdomainConfig()
    subdomain = SubdomainConfig(
        base_domains=sub.get("base_domains", default_sub.base_domains, _list(_via(validate_hostname))),
        non_passthrough=SubdomainPolicy(
            sub.get("non_passthrough", default_sub.non_passthrough, _choice(*(p.value for p in SubdomainPolicy)))
        ),
    )
    sub.done()

    def prefix(key: str, value: Any) -> str:
        value = _string(key, value)
        if value:
            try:
                validate_hostname(value)
            except ValueError as error:
                raise ConfigError(key, f"bad prefix: {error}") from None
        return value.lower()

    txt_table = table.table("txt")
    default_txt = TXTConfig()
    txt = TXTConfig(
        prefix=txt_table.get("prefix", default_txt.prefix, prefix),
        legacy_prefix=txt_table.get("legacy_prefix", default_txt.legacy_prefix, prefix),
        wildcard_prefix=txt_table.get("wildcard_prefix", default_txt.wildcard_prefix, prefix),
    )
    txt_table.done()
    if not txt.prefix:
        raise ConfigError(txt_table.key("prefix"), "cannot be empty")

    system_table = table.table("system")
    default_system = SystemConfig()
    system = SystemConfig(
        allow=system_table.get("allow", default_system.allow, _list(_via(validate_pattern))),
        port=system_table.get("port", default_system.port, _integer(1, 65535)),
        allow_private=system_table.get("allow_private", default_system.allow_private, _boolean),
        timeout=system_table.get("timeout", default_system.timeout, _number(above=True)),
        threads=system_table.get("threads", default_system.threads, _integer(1, 64)),
        max_queued=system_table.get("max_queued", default_system.max_queued, _integer(0, 100000)),
    )
    system_table.done()
    table.done()

    if "subdomain" in sources and not subdomain.base_domains:
        raise ConfigError(sub.key("base_domains"), "is empty but 'subdomain' is in routing.sources")
    if "system" in sources and not system.allow:
        raise ConfigError(system_table.key("allow"), "is empty but 'system' is in routing.sources")
    return RoutingConfig(sources=sources, static=static, subdomain=subdomain, txt=txt, system=system)


def _apps(table: _Table) -> dict[str, AppConfig]:
    apps: dict[str, AppConfig] = {}

    def backend(text: str) -> AppBackend:
        host, port = parse_address(text)
        return AppBackend(host, port)

    for app_id in table.data:
        key = table.key(app_id)
        try:
            normal = validate_hostname(app_id)
        except ValueError as error:
            raise ConfigError(key, f"bad app id: {error}") from None
        if "." in normal:
            raise ConfigError(key, "bad app id: must be a single DNS label")
        app = table.table(app_id)
        backends = app.get("backends", None, _list(_via(backend)))
        proxy_protocol = app.get("proxy_protocol", _default(AppConfig, "proxy_protocol"), _proxy_protocol)
        balance = app.get("balance", _default(AppConfig, "balance"), _choice("least-connections", "first", "random"))
        max_connections = app.get("max_connections", _default(AppConfig, "max_connections"), _integer(0))
        app.done()
        if not backends:
            raise ConfigError(app.key("backends"), "needs at least one 'host' or 'host:port'")
        apps[normal] = AppConfig(
            backends=backends, proxy_protocol=proxy_protocol, balance=balance, max_connections=max_connections
        )
    table.done()
    return apps


def _dns(table: _Table) -> DNSConfig:
    d = DNSConfig()
    seconds = _number()
    config = DNSConfig(
        servers=table.get("servers", d.servers, _list(_via(_dns_server))),
        resolv_conf=table.get("resolv_conf", d.resolv_conf, _string),
        timeout=table.get("timeout", d.timeout, _number(above=True)),
        attempts=table.get("attempts", d.attempts, _integer(1, 10)),
        deadline=table.get("deadline", d.deadline, _number(above=True)),
        min_ttl=table.get("min_ttl", d.min_ttl, seconds),
        max_ttl=table.get("max_ttl", d.max_ttl, seconds),
        max_negative_ttl=table.get("max_negative_ttl", d.max_negative_ttl, seconds),
        failure_backoff=table.get("failure_backoff", d.failure_backoff, seconds),
        max_stale=table.get("max_stale", d.max_stale, seconds),
        stale_wait=table.get("stale_wait", d.stale_wait, seconds),
        refresh_ahead=table.get("refresh_ahead", d.refresh_ahead, _number(0.0, 1.0)),
        max_entries=table.get("max_entries", d.max_entries, _integer(1)),
        prefetch=table.get("prefetch", d.prefetch, _list(_via(validate_hostname))),
        min_refresh=table.get("min_refresh", d.min_refresh, _number(0.0, 3600.0)),
        cache_file=table.get("cache_file", d.cache_file, _string),
        cache_save_interval=table.get("cache_save_interval", d.cache_save_interval, _number(1.0, 86400.0)),
    )
    if config.min_ttl > config.max_ttl:
        raise ConfigError(table.key("min_ttl"), f"is above dns.max_ttl ({config.max_ttl:g})")
    table.done()
    return config


def _log(table: _Table) -> LogConfig:
    config = LogConfig(access=table.get("access", LogConfig().access, _string))
    table.done()
    return config


def _admin(table: _Table) -> AdminConfig:
    listen = table.get("listen", AdminConfig().listen, _string)
    if listen:
        _endpoint(table.key("listen"), listen)
    table.done()
    return AdminConfig(listen=listen)


def parse_config(data: Mapping[str, Any], path: str = "") -> Config:
    """
    Validate a parsed TOML document and build the L{Config}.

    @raise ConfigError: naming the first key that is wrong.
    """
    root = _Table("", dict(data))
    config = Config(
        proxy=_proxy(root.table("proxy")),
        routing=_routing(root.table("routing")),
        apps=_apps(root.table("apps")),
        dns=_dns(root.table("dns")),
        log=_log(root.table("log")),
        admin=_admin(root.table("admin")),
        path=path,
    )
    root.done()
    for pattern, target in config.routing.static.items():
        if target.app is not None and target.app not in config.apps:
            key = f"routing.static.{_key_part(pattern, quote=True)}.app"
            raise ConfigError(key, f"names {target.app!r}, which is not in [apps]")
    return config


def load_config(path: str) -> Config:
    """
    Read and validate the config file at C{path}.

    @raise ConfigError: when the file cannot be read, is not TOML, or any
        key is wrong; the message says which.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as error:
        raise ConfigError(path, f"cannot read the config file: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, f"not valid TOML: {error}") from None
    except UnicodeDecodeError as error:
        # tomllib.load decodes before it parses, and lets this through.
        raise ConfigError(path, f"not valid TOML: not UTF-8 (byte {error.start} of the file)") from None
    except RecursionError:
        # tomllib recurses per level of nested arrays and inline tables.
        raise ConfigError(path, "not valid TOML: arrays or inline tables nested too deeply") from None
    return parse_config(data, path)
