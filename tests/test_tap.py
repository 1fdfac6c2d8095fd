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
