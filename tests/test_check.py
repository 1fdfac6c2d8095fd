"""
C{python -m sniproxy.check}: the config check, run as a real child process
on good and bad files (exit codes and exact output lines), compared with
what a start prints, and shown to bind nothing, query nothing and create
nothing; and L{sniproxy.check.check} and L{sniproxy.accesslog.cannot_open} in-process.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from sniproxy.accesslog import cannot_open as check_access_log
from sniproxy.check import check
from sniproxy.config import Config, ConfigError
from sniproxy.testing.process import child_environment, twistd_command

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LISTEN = '[proxy]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
GOOD = LISTEN + '[routing.static]\n"app.example.com" = "127.0.0.1:9"\n'


def _run(*arguments: str, cwd: str) -> subprocess.CompletedProcess:
    """Run C{python -m sniproxy.check ARGUMENTS} and wait (at most 30 s)."""
    return subprocess.run(
        [sys.executable, "-m", "sniproxy.check", *arguments],
        env=child_environment(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


class _Files:
    """A temporary directory for config files, removed after the test."""

    def make_dir(self) -> str:
        path = tempfile.mkdtemp(prefix="sniproxy-check-")
        self.addCleanup(shutil.rmtree, path, True)  # type: ignore[attr-defined]
        return path

    def write(self, directory: str, name: str, content: str | bytes) -> str:
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
        return path


class CheckCommandTests(_Files, TestCase):
    """The command as operators and scripts run it: a child process."""

    timeout = 120

    def setUp(self) -> None:
        self.dir = self.make_dir()

    def assertResult(self, result: subprocess.CompletedProcess, code: int, stdout: str, stderr: str) -> None:
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr),
            (code, stdout, stderr),
        )

    def assertInvalid(self, result: subprocess.CompletedProcess, line: str) -> None:
        """Exit 1, nothing on stdout, exactly C{line} on stderr."""
        self.assertNotIn("Traceback", result.stderr)
        self.assertResult(result, 1, "", line + "\n")

    def test_good_file(self):
        """A good file: C{sniproxy: config FILE ok} on stdout, exit 0."""
        path = self.write(self.dir, "good.toml", GOOD)
        self.assertResult(_run("--config", path, cwd=self.dir), 0, f"sniproxy: config {path} ok\n", "")

    def test_relative_path_and_short_option(self):
        """The path is printed as given; C{-c} is C{--config}."""
        self.write(self.dir, "good.toml", GOOD)
        self.assertResult(_run("-c", "good.toml", cwd=self.dir), 0, "sniproxy: config good.toml ok\n", "")

    def test_shipped_config(self):
        """The example config in C{etc/} passes."""
        path = os.path.join(_ROOT, "etc", "sniproxy.toml")
        self.assertResult(_run("--config", path, cwd=self.dir), 0, f"sniproxy: config {path} ok\n", "")

    def test_bad_files(self):
        """
        Each kind of bad file: exit 1 and one line naming the key (or the
        file), never a traceback.
        """
        cases = [
            ("not-utf8.toml", b"\xff\xfe[proxy]\n", "{path}: not valid TOML: not UTF-8 (byte 0 of the file)"),
            (
                "not-toml.toml",
                "[proxy\n",
                "{path}: not valid TOML: Expected ']' at the end of a table declaration (at line 1, column 7)",
            ),
            ("unknown-key.toml", LISTEN + "listen_on = 1\n", "proxy.listen_on: unknown key"),
            ("unknown-table.toml", LISTEN + "[proxi]\nlisten = 1\n", "proxi: unknown key"),
            (
                "bad-type.toml",
                LISTEN + 'idle_timeout = "forever"\n',
                "proxy.idle_timeout: expected a number, got a string 'forever'",
            ),
            (
                "bad-endpoint.toml",
                '[proxy]\nlisten = ["tcp:notaport"]\n',
                "proxy.listen[0]: bad endpoint 'tcp:notaport': invalid literal for int() with base 10: 'notaport'",
            ),
            (
                "unknown-endpoint.toml",
                '[proxy]\nlisten = ["nosuch:443"]\n',
                "proxy.listen[0]: bad endpoint 'nosuch:443': Unknown endpoint type: 'nosuch'",
            ),
            (
                "bad-admin-endpoint.toml",
                LISTEN + '[admin]\nlisten = "tcp:x"\n',
                "admin.listen: bad endpoint 'tcp:x': invalid literal for int() with base 10: 'x'",
            ),
            (
                "log-in-missing-dir.toml",
                LISTEN + '[log]\naccess = "{dir}/no-such-dir/access.log"\n',
                "log.access: cannot open '{dir}/no-such-dir/access.log': No such file or directory",
            ),
            (
                "log-is-a-directory.toml",
                LISTEN + '[log]\naccess = "{dir}"\n',
                "log.access: cannot open '{dir}': Is a directory",
            ),
        ]
        for name, content, line in cases:
            if isinstance(content, str):
                content = content.format(dir=self.dir)
            path = self.write(self.dir, name, content)
            self.assertInvalid(_run("--config", path, cwd=self.dir), "sniproxy: config: " + line.format(path=path, dir=self.dir))

    def test_missing_file_and_directory(self):
        missing = os.path.join(self.dir, "missing.toml")
        self.assertInvalid(
            _run("--config", missing, cwd=self.dir),
            f"sniproxy: config: {missing}: cannot read the config file: No such file or directory",
        )
        self.assertInvalid(
            _run("--config", self.dir, cwd=self.dir),
            f"sniproxy: config: {self.dir}: cannot read the config file: Is a directory",
        )

    def test_unwritable_access_log(self):
        """
        An access log in a directory the user may not write to fails the
        check, naming C{log.access}.  (Root may write anywhere but in
        sysfs: as root, the log is put there.)
        """
        if os.geteuid() == 0:
            if not os.path.isdir("/sys/kernel"):
                raise SkipTest("running as root, and no sysfs for a directory root cannot write to")
            access = "/sys/sniproxy-check-test.log"
        else:
            logs = os.path.join(self.dir, "logs")
            os.mkdir(logs)
            os.chmod(logs, 0o555)
            self.addCleanup(os.chmod, logs, 0o755)
            access = os.path.join(logs, "access.log")
        path = self.write(self.dir, "unwritable.toml", LISTEN + f'[log]\naccess = "{access}"\n')
        result = _run("--config", path, cwd=self.dir)
        self.assertInvalid(result, f"sniproxy: config: log.access: cannot open '{access}': Permission denied")

    def test_same_line_as_a_start(self):
        """
        The check's line is the one C{twistd sniproxy} prints for the same
        file (after its program name), and the init script shows.
        """
        for name, content in [
            ("bad-type.toml", LISTEN + 'idle_timeout = "forever"\n'),
            ("bad-endpoint.toml", '[proxy]\nlisten = ["tcp:notaport"]\n'),
            ("missing.toml", None),
        ]:
            path = os.path.join(self.dir, name)
            if content is not None:
                self.write(self.dir, name, content)
            start = subprocess.run(
                twistd_command("-n", "--pidfile=", "sniproxy", "--config", path),
                env=child_environment(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
            )
            self.assertNotEqual(start.returncode, 0)
            output = start.stdout + start.stderr
            at = output.find(": config: ")
            self.assertNotEqual(at, -1, output)
            start_line = "sniproxy" + output[at:].splitlines()[0]
            self.assertInvalid(_run("--config", path, cwd=self.dir), start_line)

    def test_usage_errors(self):
        """Bad arguments exit 2 with a usage line; C{--help} exits 0."""
        path = self.write(self.dir, "good.toml", GOOD)
        for arguments, first in [
            (("--config", path, "extra"), "sniproxy.check: Wrong number of arguments."),
            (("--bogus",), "sniproxy.check: option --bogus not recognized"),
            (("--config",), "sniproxy.check: option --config requires argument"),
            (
                ("--config", path, "--systemd-sockets", "a::b"),
                "sniproxy.check: --systemd-sockets: expected a count or names separated by ':', got 'a::b'",
            ),
        ]:
            result = _run(*arguments, cwd=self.dir)
            self.assertEqual(result.returncode, 2, result)
            self.assertEqual(result.stdout, "")
            self.assertEqual(result.stderr.splitlines()[0], first)
            self.assertIn("usage: python -m sniproxy.check", result.stderr)
        result = _run("--help", cwd=self.dir)
        self.assertEqual(result.returncode, 0, result)
        self.assertIn("--config", result.stdout)

    def test_does_not_bind(self):
        """
        A listen port already taken does not fail the check: it binds
        nothing (a start would fail there, which no check can foresee).
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = self.write(
            self.dir,
            "taken.toml",
            f'[proxy]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n[admin]\nlisten = "tcp:{port}:interface=127.0.0.1"\n',
        )
        self.assertResult(_run("--config", path, cwd=self.dir), 0, f"sniproxy: config {path} ok\n", "")

    def test_sends_no_dns_query(self):
        """
        With the C{txt} source, prefetch names and backends named by host,
        the check builds the router without sending the DNS server a
        single packet.
        """
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        path = self.write(
            self.dir,
            "dns.toml",
            LISTEN
            + '[routing]\nsources = ["static", "subdomain", "txt", "system"]\n'
            + '[routing.static]\n"a.example.com" = "backend.example.net:443"\n'
            + '"*.apps.example.com" = { app = "web", port = 443 }\n'
            + '[routing.subdomain]\nbase_domains = ["gw.example.com"]\n'
            + '[routing.system]\nallow = ["*.svc.example"]\n'
            + '[apps.web]\nbackends = ["web.example.net"]\n'
            + f'[dns]\nservers = ["127.0.0.1:{port}"]\nprefetch = ["warm.example.com"]\n',
        )
        self.assertResult(_run("--config", path, cwd=self.dir), 0, f"sniproxy: config {path} ok\n", "")
        server.setblocking(False)
        with self.assertRaises(BlockingIOError):
            server.recv(4096)

    def test_creates_and_changes_nothing(self):
        """
        A missing access log is not created; an existing one keeps its
        content; no probe file is left behind.
        """
        logs = os.path.join(self.dir, "logs")
        os.mkdir(logs)
        missing = os.path.join(logs, "new.log")
        path = self.write(self.dir, "new.toml", LISTEN + f'[log]\naccess = "{missing}"\n')
        self.assertResult(_run("--config", path, cwd=self.dir), 0, f"sniproxy: config {path} ok\n", "")
        self.assertEqual(os.listdir(logs), [])

        existing = self.write(logs, "old.log", '{"sni":"a.example.com"}\n')
        before = os.stat(existing)
        path = self.write(self.dir, "old.toml", LISTEN + f'[log]\naccess = "{existing}"\n')
        self.assertResult(_run("--config", path, cwd=self.dir), 0, f"sniproxy: config {path} ok\n", "")
        with open(existing) as f:
            self.assertEqual(f.read(), '{"sni":"a.example.com"}\n')
        self.assertEqual(os.stat(existing).st_size, before.st_size)
        self.assertEqual(sorted(os.listdir(logs)), ["old.log"])

    def test_systemd_sockets(self):
        """
        The socket-activated config needs the socket systemd passes: it
        fails without, passes with C{--systemd-sockets 1}, and an index
        past the sockets given still fails.
        """
        shipped = os.path.join(_ROOT, "etc", "sniproxy-socket.toml")
        line = (
            "sniproxy: config: proxy.listen[0]: bad endpoint 'systemd:domain=INET:index=0': "
            "systemd passed no socket at that index"
        )
        self.assertInvalid(_run("--config", shipped, cwd=self.dir), line)
        self.assertResult(
            _run("--config", shipped, "--systemd-sockets", "1", cwd=self.dir),
            0,
            f"sniproxy: config {shipped} ok\n",
            "",
        )
        path = self.write(self.dir, "two.toml", '[proxy]\nlisten = ["systemd:domain=INET:index=1"]\n')
        self.assertInvalid(
            _run("--config", path, "--systemd-sockets", "1", cwd=self.dir),
            "sniproxy: config: proxy.listen[0]: bad endpoint 'systemd:domain=INET:index=1': "
            "systemd passed no socket at that index",
        )
        named = self.write(self.dir, "named.toml", '[proxy]\nlisten = ["systemd:domain=INET:name=https"]\n')
        self.assertResult(
            _run("--config", named, "--systemd-sockets", "http:https", cwd=self.dir),
            0,
            f"sniproxy: config {named} ok\n",
            "",
        )


class CheckFunctionTests(_Files, SynchronousTestCase):
    """L{check} and L{sniproxy.accesslog.cannot_open}, in-process."""

    def setUp(self) -> None:
        self.dir = self.make_dir()

    def test_returns_the_config(self):
        path = self.write(self.dir, "good.toml", GOOD)
        config = check(path)
        self.assertIsInstance(config, Config)
        self.assertEqual(config.proxy.listen, ("tcp:0:interface=127.0.0.1",))

    def test_raises_the_config_error(self):
        path = self.write(self.dir, "bad.toml", LISTEN + 'idle_timeout = "forever"\n')
        error = self.assertRaises(ConfigError, check, path)
        self.assertEqual(error.key, "proxy.idle_timeout")

    def test_access_log_error_names_the_key(self):
        path = self.write(self.dir, "log.toml", LISTEN + f'[log]\naccess = "{self.dir}/none/a.log"\n')
        error = self.assertRaises(ConfigError, check, path)
        self.assertEqual(error.key, "log.access")

    def test_systemd_sockets_restored(self):
        """C{systemd_sockets} applies during the check only."""
        path = self.write(self.dir, "sd.toml", '[proxy]\nlisten = ["systemd:domain=INET:index=0"]\n')
        check(path, systemd_sockets=["unknown"])
        self.assertRaises(ConfigError, check, path)

    def test_access_log_off_or_stdout(self):
        self.assertIsNone(check_access_log(""))
        self.assertIsNone(check_access_log("-"))

    def test_access_log_existing_and_new(self):
        self.assertIsNone(check_access_log(os.path.join(self.dir, "new.log")))
        self.assertEqual(os.listdir(self.dir), [])
        existing = self.write(self.dir, "old.log", "x\n")
        self.assertIsNone(check_access_log(existing))
        with open(existing) as f:
            self.assertEqual(f.read(), "x\n")

    def test_access_log_fifo_without_reader(self):
        """A FIFO nobody reads yet does not hang the check, and passes."""
        if not hasattr(os, "mkfifo"):
            raise SkipTest("no FIFOs here")
        fifo = os.path.join(self.dir, "fifo")
        os.mkfifo(fifo)
        self.assertIsNone(check_access_log(fifo))

    def test_access_log_problems(self):
        self.assertEqual(
            check_access_log(os.path.join(self.dir, "none", "a.log")),
            f"cannot open '{self.dir}/none/a.log': No such file or directory",
        )
        self.assertEqual(check_access_log(self.dir), f"cannot open '{self.dir}': Is a directory")
        afile = self.write(self.dir, "file", "")
        self.assertEqual(
            check_access_log(os.path.join(afile, "a.log")),
            f"cannot open '{afile}/a.log': Not a directory",
        )


def _unit(path: str) -> dict[str, list[str]]:
    """
    The settings of a systemd unit file, C{"Section.Key"} -> its values in
    order (a key may repeat), with comments dropped and continued lines
    joined, as systemd reads them.
    """
    settings: dict[str, list[str]] = {}
    section = ""
    pending = ""
    with open(path) as f:
        for raw in f:
            line = pending + raw.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            key, _, value = line.partition("=")
            settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


class SystemdUnitTests(_Files, TestCase):
    """
    The shipped units check the config before starting and before the
    reload signal, with the command that works on the config they name.
    """

    timeout = 60
    units = {
        "sniproxy.service": "sniproxy.toml",
        "sniproxy-socket.service": "sniproxy-socket.toml",
    }

    def unit(self, name: str) -> dict[str, list[str]]:
        return _unit(os.path.join(_ROOT, "etc", "systemd", name))

    def test_check_before_start_and_reload(self):
        """
        ExecStartPre= is the check of the very file ExecStart= runs;
        ExecReload= runs the same check, then SIGHUP to the main process.
        """
        for name, config in self.units.items():
            unit = self.unit(name)
            [start] = unit["Service.ExecStart"]
            [pre] = unit["Service.ExecStartPre"]
            start_argv, pre_argv = shlex.split(start), shlex.split(pre)
            path = start_argv[start_argv.index("--config") + 1]
            self.assertEqual(path, f"/etc/sniproxy/{config}")
            self.assertEqual(pre_argv[1:3], ["-m", "sniproxy.check"], name)
            self.assertIn("python", os.path.basename(pre_argv[0]))
            self.assertEqual(pre_argv[pre_argv.index("--config") + 1], path, name)
            self.assertEqual(unit["Service.ExecReload"], [pre, "/bin/kill -HUP $MAINPID"], name)
            self.assertEqual(unit["Service.StateDirectory"], ["sniproxy"], name)

    def test_socket_unit_counts_its_sockets(self):
        """The socket unit's check is told as many sockets as the .socket passes."""
        [pre] = self.unit("sniproxy-socket.service")["Service.ExecStartPre"]
        argv = shlex.split(pre)
        listen = self.unit("sniproxy-socket.socket")["Socket.ListenStream"]
        self.assertEqual(argv[argv.index("--systemd-sockets") + 1], str(len(listen)))

    def test_unit_check_passes_on_the_shipped_config(self):
        """
        The units' check command, run with this interpreter on the example
        config it names (etc/ for /etc/sniproxy/), passes.
        """
        for name, config in self.units.items():
            [pre] = self.unit(name)["Service.ExecStartPre"]
            argv = shlex.split(pre)
            at = argv.index("--config") + 1
            argv[at] = os.path.join(_ROOT, "etc", config)
            result = _run(*argv[3:], cwd=self.make_dir())
            self.assertEqual(
                (result.returncode, result.stdout, result.stderr),
                (0, f"sniproxy: config {argv[at]} ok\n", ""),
                name,
            )

    def test_systemd_analyze_verify(self):
        """
        C{systemd-analyze verify} finds nothing to say about the units
        (their executables mapped to ones that exist here).
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed (Debian package systemd)")
        directory = self.make_dir()
        paths = []
        for name in sorted(os.listdir(os.path.join(_ROOT, "etc", "systemd"))):
            with open(os.path.join(_ROOT, "etc", "systemd", name)) as f:
                text = f.read()
            text = text.replace("/usr/bin/twistd", sys.executable).replace("/usr/bin/python3", sys.executable)
            paths.append(self.write(directory, name, text))
        result = subprocess.run(
            [analyze, "verify", "--man=no", *paths],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        output = result.stdout + result.stderr
        if result.returncode != 0 and "Failed to" in output and directory not in output:
            raise SkipTest(f"systemd-analyze cannot run here: {output.strip()}")
        self.assertEqual((result.returncode, [line for line in output.splitlines() if directory in line]), (0, []), output)
