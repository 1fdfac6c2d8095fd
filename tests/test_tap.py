"""C{twistd sniproxy}'s options: the config is validated before anything starts."""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from sniproxy.service import ProxyService
from sniproxy.tap import Options, makeService


class OptionsTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_help_documents_config(self):
        text = str(Options())
        self.assertIn("--config=", text)
        self.assertIn("TOML config file", text)

    def test_valid_config_makes_a_service(self):
        options = Options()
        options.parseOptions(["--config", self.write('[routing.static]\n"a.example" = "127.0.0.1:1"\n')])
        service = makeService(options)
        self.assertIsInstance(service, ProxyService)
        self.assertEqual(list(service.config.routing.static), ["a.example"])

    def test_invalid_config_is_a_usage_error_naming_the_key(self):
        options = Options()
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["--config", self.write("[proxy]\nconnect_timeout = -1\n")])
        self.assertEqual(str(caught.exception), "config: proxy.connect_timeout: must be above 0, got -1")

    def test_missing_config_names_the_file(self):
        options = Options()
        path = self.mktemp()
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["--config", path])
        self.assertIn(path, str(caught.exception))


class UnderTwistdTests(SynchronousTestCase):
    """Under twistd (the options have a parent), a bad config exits 1 on every Twisted."""

    def test_bad_config_prints_usage_and_the_line_then_exits_1(self):
        import io
        import sys

        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[proxy]\nconnect_timeout = -1\n")
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "argv", ["twistd", "-n", "sniproxy"])
        options = Options()
        options.parent = "Usage: twistd [options]"
        with self.assertRaises(SystemExit) as caught:
            options.parseOptions(["--config", path])
        self.assertEqual(caught.exception.code, 1)
        self.assertEqual(
            out.getvalue().splitlines(),
            ["Usage: twistd [options]", "twistd -n: config: proxy.connect_timeout: must be above 0, got -1"],
        )

    def test_access_log_that_cannot_be_opened_stops_the_start(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[log]\naccess = "/nonexistent-dir/sniproxy/access.log"\n')
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["--config", path])
        self.assertTrue(str(caught.exception).startswith("config: log.access: cannot open"), str(caught.exception))
