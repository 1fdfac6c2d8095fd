"""
The LSB init script, C{etc/init.d/sniproxy}, run by C{sh} against a
temporary directory: start, status, reload and stop of the real daemon
(C{twistd sniproxy} in daemon mode, with a pidfile and a logfile), and the
config check it runs before restart and reload, and as C{configtest}.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SkipTest, TestCase

from sniproxy.testing.process import child_environment

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(_ROOT, "etc", "init.d", "sniproxy")

GOOD_CONFIG = """\
[proxy]
listen = ["tcp:0:interface=127.0.0.1"]
[routing.static]
"app.example.com" = "127.0.0.1:9"
"""

BAD_CONFIG = """\
[proxy]
listen = ["tcp:0:interface=127.0.0.1"]
idle_timeout = "forever"
"""

# What the config check (and a start) print for BAD_CONFIG.
BAD_LINE = "sniproxy: config: proxy.idle_timeout: expected a number, got a string 'forever'"


def _alive(pid: int) -> bool:
    """Whether C{pid} is a live process (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split()[1] not in ("Z", "X")
        return True
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _gone(pid: int, timeout: float = 5.0) -> bool:
    """
    Whether C{pid} ends within C{timeout}: the script's stop returns once
    the process is no longer a sniproxy (its command line is gone as it
    exits), a moment before the kernel has it a zombie.
    """
    return _poll(lambda: not _alive(pid), timeout, 0.02)


def _poll(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class InitScriptTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        if os.name != "posix":
            raise SkipTest("the init script is for POSIX systems")
        self.sh = shutil.which("sh")
        if self.sh is None:
            raise SkipTest("sh is not installed")
        self.dir = tempfile.mkdtemp(prefix="sniproxy-initscript-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.config = os.path.join(self.dir, "sniproxy.toml")
        self.pidfile = os.path.join(self.dir, "run", "sniproxy.pid")
        self.logfile = os.path.join(self.dir, "log", "sniproxy.log")
        self.write_config(GOOD_CONFIG)

        # TWISTD is one word: a wrapper running this interpreter's twistd.
        twistd = os.path.join(self.dir, "twistd")
        with open(twistd, "w") as f:
            f.write(
                "#!/bin/sh\n"
                f"exec {shlex.quote(sys.executable)} -c "
                "'from twisted.scripts.twistd import run; run()' \"$@\"\n"
            )
        os.chmod(twistd, 0o755)

        env = {
            name: value
            for name, value in child_environment().items()
            if not name.startswith("SNIPROXY_") and name != "TWISTD"
        }
        env.update(
            SNIPROXY_DEFAULTS=os.path.join(self.dir, "no-such-defaults"),
            SNIPROXY_CONFIG=self.config,
            SNIPROXY_RUNDIR=os.path.join(self.dir, "run"),
            SNIPROXY_PIDFILE=self.pidfile,
            SNIPROXY_LOGFILE=self.logfile,
            SNIPROXY_DNS_CACHE_FILE=os.path.join(self.dir, "state", "dns-cache.json"),
            SNIPROXY_STATEDIR=os.path.join(self.dir, "state"),
            SNIPROXY_PYTHON=sys.executable,
            TWISTD=twistd,
        )
        self.env = env
        self.pids: set[int] = set()
        self.addCleanup(self.kill_leftovers)

    def kill_leftovers(self) -> None:
        """Leave no daemon behind, whatever the test did."""
        pid = self.read_pid()
        if pid is not None:
            self.pids.add(pid)
        for pid in self.pids:
            if _alive(pid) and self.ours(pid):
                os.kill(pid, signal.SIGKILL)

    def ours(self, pid: int) -> bool:
        """Whether C{pid} runs our config (not a recycled pid)."""
        if pid == os.getpid():
            return False
        if not os.path.isdir("/proc/self"):
            return True
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return self.config.encode() in f.read().split(b"\0")
        except FileNotFoundError:
            return False
        except OSError:
            return True

    def write_config(self, text: str) -> None:
        with open(self.config, "w") as f:
            f.write(text)

    def read_pid(self) -> int | None:
        try:
            with open(self.pidfile) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def log(self) -> str:
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def run_script(self, action: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [self.sh, SCRIPT, action],
            env=self.env if env is None else env,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        pid = self.read_pid()
        if pid is not None:
            self.pids.add(pid)
        return result

    def assertExit(self, result: subprocess.CompletedProcess, code: int) -> None:
        self.assertEqual(
            result.returncode,
            code,
            f"{result.args[-1]}: exit {result.returncode}\nstdout: {result.stdout}\n"
            f"stderr: {result.stderr}\nlog:\n{self.log()}",
        )

    def start(self) -> int:
        result = self.run_script("start")
        self.assertExit(result, 0)
        pid = self.read_pid()
        self.assertIsNotNone(pid, f"no pidfile after start\n{result.stdout}{result.stderr}")
        self.assertTrue(_alive(pid), f"pid {pid} from the pidfile is not alive\nlog:\n{self.log()}")
        self.assertIn(f"(pid {pid})", result.stdout)
        return pid

    def test_start_status_reload_stop(self):
        """
        start runs the daemon (pidfile naming a live process), status says
        so, reload makes it re-read the config, a second start is a no-op,
        stop ends it and removes the pidfile, and status then exits 3.
        """
        pid = self.start()

        result = self.run_script("status")
        self.assertExit(result, 0)
        self.assertIn(f"sniproxy is running (pid {pid})", result.stdout)

        result = self.run_script("reload")
        self.assertExit(result, 0)
        self.assertTrue(
            _poll(lambda: f"reloaded {self.config}" in self.log()),
            f"no reload line in the log:\n{self.log()}",
        )
        self.assertTrue(_alive(pid))

        result = self.run_script("start")
        self.assertExit(result, 0)
        self.assertIn(f"already running (pid {pid})", result.stdout)
        self.assertEqual(self.read_pid(), pid)

        result = self.run_script("stop")
        self.assertExit(result, 0)
        self.assertTrue(_gone(pid), "the daemon survived stop")
        self.assertFalse(os.path.exists(self.pidfile), "stop left the pidfile")
        self.assertNotIn("SIGKILL", result.stderr)

        result = self.run_script("status")
        self.assertExit(result, 3)
        self.assertIn("sniproxy is not running", result.stdout)

        # Stopping a stopped service succeeds (LSB).
        self.assertExit(self.run_script("stop"), 0)

    def test_reload_with_a_broken_config_keeps_running(self):
        """
        reload of a broken file fails, naming the key, and the daemon keeps
        running with its old config.
        """
        pid = self.start()
        self.write_config(BAD_CONFIG)
        result = self.run_script("reload")
        self.assertExit(result, 1)
        self.assertIn(f"{BAD_LINE}\n", result.stderr)
        self.assertIn(f"not reloading: the running sniproxy (pid {pid}) keeps its config", result.stderr)
        self.assertTrue(_alive(pid))
        # The check refused it: the daemon was not even signalled.
        self.assertNotIn("reload of", self.log())
        self.assertExit(self.run_script("status"), 0)
        self.assertExit(self.run_script("stop"), 0)
        self.assertTrue(_gone(pid))

    def test_start_with_a_broken_config_fails_naming_the_key(self):
        self.write_config(BAD_CONFIG)
        result = self.run_script("start")
        self.assertNotEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("config: proxy.idle_timeout: expected a number", result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertIsNone(self.read_pid())
        self.assertExit(self.run_script("status"), 3)

    def test_stale_pidfile(self):
        """
        A pidfile naming a dead process, or a live process that is not
        sniproxy, is stale: status exits 1, and start replaces it.
        """
        os.makedirs(os.path.dirname(self.pidfile), exist_ok=True)
        dead = subprocess.Popen(["true"] if shutil.which("true") else [sys.executable, "-c", ""])
        dead.wait()
        # This very process (the test runner) is alive but not sniproxy.
        for stale in (dead.pid, os.getpid()):
            with open(self.pidfile, "w") as f:
                f.write(f"{stale}\n")
            result = self.run_script("status")
            self.assertExit(result, 1)
            self.assertIn("not running", result.stdout)
        pid = self.start()
        self.assertNotEqual(pid, os.getpid())
        self.assertExit(self.run_script("stop"), 0)
        self.assertTrue(_gone(pid))

    def test_restart_with_a_broken_config_keeps_running(self):
        """
        restart (and try-restart) of a broken file print the check's line
        and exit 1 without stopping the running proxy; once the file is
        fixed, restart replaces the process.
        """
        pid = self.start()
        self.write_config(BAD_CONFIG)
        for action in ("restart", "try-restart"):
            result = self.run_script(action)
            self.assertExit(result, 1)
            self.assertEqual(
                result.stderr,
                f"{BAD_LINE}\nsniproxy: not restarting: the running sniproxy (pid {pid}) keeps running with its config\n",
            )
            self.assertNotIn("Stopped", result.stdout)
            self.assertTrue(_alive(pid), f"{action} of a broken file stopped the proxy")
            self.assertEqual(self.read_pid(), pid)
            result = self.run_script("status")
            self.assertExit(result, 0)
            self.assertIn(f"(pid {pid})", result.stdout)

        self.write_config(GOOD_CONFIG)
        result = self.run_script("restart")
        self.assertExit(result, 0)
        self.assertIn(f"Stopped sniproxy (pid {pid})", result.stdout)
        new = self.read_pid()
        self.assertIsNotNone(new)
        self.assertNotEqual(new, pid)
        self.assertTrue(_gone(pid))
        self.assertTrue(_alive(new))
        self.assertExit(self.run_script("stop"), 0)
        self.assertTrue(_gone(new))

    def test_restart_when_not_running_starts(self):
        """restart of a stopped proxy just starts it (no check needed: start validates)."""
        result = self.run_script("restart")
        self.assertExit(result, 0)
        pid = self.read_pid()
        self.assertTrue(_alive(pid))
        self.assertExit(self.run_script("stop"), 0)

    def test_start_creates_the_state_directory(self):
        state = os.path.join(self.dir, "state")
        self.assertFalse(os.path.exists(state))
        self.start()
        self.assertTrue(os.path.isdir(state))
        self.assertExit(self.run_script("stop"), 0)

    def test_configtest(self):
        """
        configtest (alias check) prints the check's verdict and exits with
        its status; a missing file exits 6 (as start does).
        """
        for action in ("configtest", "check"):
            result = self.run_script(action)
            self.assertExit(result, 0)
            self.assertEqual((result.stdout, result.stderr), (f"sniproxy: config {self.config} ok\n", ""))
        self.write_config(BAD_CONFIG)
        result = self.run_script("configtest")
        self.assertExit(result, 1)
        self.assertEqual((result.stdout, result.stderr), ("", f"{BAD_LINE}\n"))
        os.unlink(self.config)
        result = self.run_script("configtest")
        self.assertExit(result, 6)
        self.assertIn("no such file", result.stderr)
        # Nothing was started along the way.
        self.assertIsNone(self.read_pid())

    def test_check_cannot_run(self):
        """
        A Python without sniproxy: configtest and restart say the check
        could not run (status 5), and restart leaves the proxy running.
        """
        pid = self.start()
        env = dict(self.env, SNIPROXY_PYTHON=os.path.join(self.dir, "no-such-python"))
        for action in ("configtest", "restart"):
            result = self.run_script(action, env)
            self.assertExit(result, 5)
            self.assertIn("cannot run the config check", result.stderr)
            self.assertTrue(_alive(pid))
        self.assertExit(self.run_script("stop"), 0)

    def test_python_from_twistd_shebang(self):
        """
        Without SNIPROXY_PYTHON, the check runs on the interpreter named by
        twistd's #! line (a virtualenv's twistd names its own python).
        """
        twistd = os.path.join(self.dir, "venv-twistd")
        with open(twistd, "w") as f:
            f.write(f"#!{sys.executable}\nfrom twisted.scripts.twistd import run\nrun()\n")
        os.chmod(twistd, 0o755)
        env = {name: value for name, value in self.env.items() if name != "SNIPROXY_PYTHON"}
        env["TWISTD"] = twistd
        # The python3 first on PATH is the wrong one: only the #! line
        # finds the right interpreter.
        wrong = os.path.join(self.dir, "wrong-bin")
        os.mkdir(wrong)
        with open(os.path.join(wrong, "python3"), "w") as f:
            f.write("#!/bin/sh\necho 'the wrong python3' >&2\nexit 1\n")
        os.chmod(os.path.join(wrong, "python3"), 0o755)
        env["PATH"] = wrong + os.pathsep + env.get("PATH", "/usr/bin:/bin")
        self.write_config(BAD_CONFIG)
        result = self.run_script("configtest", env)
        self.assertExit(result, 1)
        self.assertEqual(result.stderr, f"{BAD_LINE}\n")
