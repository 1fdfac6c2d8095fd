"""
The backend board's state machine on a L{Clock}, with an injected random
source: balancing, passive health, app caps, counters, reloads and the
Prometheus collector.
"""

from __future__ import annotations

import itertools

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from sniproxy.backends import BackendBoard, HealthState, InstanceStatus, is_acme
from sniproxy.config import ConfigError, parse_config
from sniproxy.interfaces import Address, Route
from sniproxy.record import ConnectionRecord, Outcome

A, B, C = Address("127.0.0.1", 9001), Address("127.0.0.2", 9002), Address("127.0.0.3", 9003)


def config(apps: str = "", proxy: str = ""):
    text = f"""
[proxy]
{proxy}
[apps.shop]
backends = ["127.0.0.1:9001", "127.0.0.2:9002", "127.0.0.3:9003"]
{apps}
[apps.blog]
backends = ["127.0.0.2:9002"]
"""
    import tomllib

    return parse_config(tomllib.loads(text))


def record(route: Route | None, backend: Address | None, outcome=Outcome.RELAYED, up=0, down=0) -> ConnectionRecord:
    return ConnectionRecord(
        client="127.0.0.1",
        peer="127.0.0.1:50000",
        sni="shop.example.com",
        alpn=(),
        ech=False,
        outcome=outcome,
        reason="",
        source=route.source if route is not None else None,
        app=route.app if route is not None else None,
        backend=backend,
        cache="",
        bytes_up=up,
        bytes_down=down,
        started=0.0,
        duration=1.0,
        route_seconds=None,
        connect_seconds=None,
        setup_seconds=None,
    )


def capture_logs(testcase) -> list[dict]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    testcase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


SHOP = Route(backends=(A, B, C), source="static", app="shop")
BLOG = Route(backends=(B,), source="txt", app="blog")


class BoardTestCase(SynchronousTestCase):
    def board(self, apps: str = "", proxy: str = "", randoms=(0.0,)) -> BackendBoard:
        self.clock = Clock()
        board = BackendBoard(self.clock, random=itertools.cycle(randoms).__next__)
        board.configure(config(apps, proxy))
        return board

    def connect(self, board: BackendBoard, route: Route = SHOP, alpn=()) -> Address:
        """Admit a connection and let its first address connect; return that address."""
        order = board.admit(route, alpn)
        board.attempt_won(order[0])
        return order[0]

    def state(self, board: BackendBoard, address: Address, app: str = "shop") -> InstanceStatus:
        [status] = [s for s in board.instances() if s.app == app and s.address == str(address)]
        return status


class BalancingTests(BoardTestCase):
    def test_least_connections_picks_fewest_live(self):
        """The instance with the fewest live connections goes first; the rest follow in config order."""
        board = self.board()
        self.assertEqual(self.connect(board), A)
        self.assertEqual(self.connect(board), B)
        self.assertEqual(self.connect(board), C)
        board.record_closed(record(SHOP, B))
        self.assertEqual(board.admit(SHOP), (B, A, C))

    def test_ties_broken_by_the_random_source(self):
        """Among equally loaded instances the random source chooses, so sequential traffic spreads."""
        board = self.board(randoms=(0.0, 0.5, 0.99))
        seen = []
        for _ in range(6):
            address = self.connect(board)
            seen.append(address)
            board.record_closed(record(SHOP, address))
        self.assertEqual(seen, [A, B, C, A, B, C])

    def test_first_is_config_order(self):
        """C{balance = "first"}: config order whatever the load."""
        board = self.board('balance = "first"', randoms=(0.99,))
        for _ in range(3):
            self.assertEqual(board.admit(SHOP), (A, B, C))
            board.attempt_won(A)
        self.assertEqual(self.state(board, A).live, 3)

    def test_random(self):
        """C{balance = "random"}: the random source picks, load ignored."""
        board = self.board('balance = "random"', randoms=(0.5, 0.5, 0.0))
        self.assertEqual([self.connect(board) for _ in range(3)], [B, B, A])

    def test_acme_goes_to_first_healthy_in_config_order(self):
        """ALPN exactly acme-tls/1 is not balanced: the first healthy instance in config order."""
        board = self.board(randoms=(0.99,))
        self.connect(board)  # C, the random pick
        for _ in range(3):
            self.assertEqual(board.admit(SHOP, (b"acme-tls/1",))[0], A)
        board.attempt_failed(A, "refused")
        self.assertEqual(board.admit(SHOP, (b"acme-tls/1",)), (B, C))

    def test_is_acme(self):
        self.assertTrue(is_acme((b"acme-tls/1",)))
        self.assertFalse(is_acme((b"acme-tls/1", b"h2")))
        self.assertFalse(is_acme(()))
        self.assertFalse(is_acme((b"h2",)))

    def test_route_without_app_untouched(self):
        """A route naming no app keeps its addresses; it counts live under its source."""
        board = self.board()
        route = Route(backends=(A, B), source="fallback")
        self.assertEqual(board.admit(route), (A, B))
        self.assertEqual(board.live("fallback"), 1)
        board.record_closed(record(route, A))
        self.assertEqual(board.live("fallback"), 0)


class HealthTests(BoardTestCase):
    def test_failure_ejects_for_eject_base(self):
        """A failed connect ejects the instance; it is skipped until its back-off passes."""
        board = self.board('balance = "first"')
        board.admit(SHOP)
        board.attempt_failed(A, "refused")
        self.assertEqual(self.state(board, A).state, HealthState.EJECTED)
        self.assertEqual(self.state(board, A).ejected_until, 1.0)
        self.assertEqual(board.admit(SHOP), (B, C))
        self.clock.advance(0.99)
        self.assertEqual(board.admit(SHOP), (B, C))

    def test_probe_after_backoff_one_at_a_time(self):
        """After the back-off one connection probes it first; the others skip it meanwhile."""
        board = self.board('balance = "first"')
        board.attempt_failed(A, "refused")
        self.clock.advance(1.0)
        self.assertEqual(board.admit(SHOP), (A, B, C))
        self.assertEqual(self.state(board, A).state, HealthState.PROBING)
        self.assertEqual(board.admit(SHOP), (B, C))
        self.assertEqual(board.admit(SHOP), (B, C))

    def test_probe_success_restores(self):
        events = capture_logs(self)
        board = self.board('balance = "first"')
        board.attempt_failed(A, "refused")
        self.clock.advance(1.0)
        board.admit(SHOP)
        board.attempt_won(A)
        self.assertEqual(self.state(board, A).state, HealthState.UP)
        self.assertIsNone(self.state(board, A).ejected_until)
        self.assertEqual(board.admit(SHOP), (A, B, C))
        lines = [e["log_format"] for e in events if "backend {address}" in e.get("log_format", "")]
        self.assertEqual(len(lines), 2)
        self.assertIn("ejected", lines[0])
        self.assertIn("restored", lines[1])

    def test_probe_failure_doubles_up_to_max(self):
        """Each failed probe doubles the back-off, capped at eject_max; logged once."""
        events = capture_logs(self)
        board = self.board('balance = "first"', proxy="eject_base = 1.0\neject_max = 5.0")
        board.attempt_failed(A, "refused")
        waits = []
        for _ in range(5):
            until = self.state(board, A).ejected_until
            waits.append(until - self.clock.seconds())
            self.clock.advance(until - self.clock.seconds())
            self.assertEqual(board.admit(SHOP)[0], A)
            board.attempt_failed(A, "timed out")
        self.assertEqual(waits, [1.0, 2.0, 4.0, 5.0, 5.0])
        ejections = [e for e in events if "ejected" in e.get("log_format", "")]
        self.assertEqual(len(ejections), 1)
        self.assertEqual(ejections[0]["why"], "refused")

    def test_failures_during_backoff_change_nothing(self):
        """Attempts started before the ejection failing late do not lengthen it."""
        board = self.board()
        board.attempt_failed(A, "refused")
        board.attempt_failed(A, "refused")
        board.attempt_failed(A, "refused")
        self.assertEqual(self.state(board, A).ejected_until, 1.0)
        self.assertEqual(self.state(board, A).connect_failures, 3)

    def test_dropped_probe_may_run_again(self):
        """A probe abandoned with no verdict (the client left) leaves the next connection to probe."""
        board = self.board('balance = "first"')
        board.attempt_failed(A, "refused")
        self.clock.advance(1.0)
        self.assertEqual(board.admit(SHOP)[0], A)
        board.attempt_dropped(A)
        self.assertEqual(self.state(board, A).state, HealthState.EJECTED)
        self.assertEqual(board.admit(SHOP)[0], A)

    def test_all_ejected_tries_all(self):
        """Every instance ejected: all are tried, in config order, as without health."""
        board = self.board()
        for address in (A, B, C):
            board.attempt_failed(address, "refused")
        self.assertEqual(board.admit(SHOP), (A, B, C))
        board.attempt_won(B)
        self.assertEqual(self.state(board, B).state, HealthState.UP)
        self.assertEqual(board.admit(SHOP), (B,))

    def test_all_ejected_probe_leads_the_rest(self):
        """Every instance ejected and one due for its probe: the probe first, then all the others."""
        board = self.board()
        for address in (A, B, C):
            board.attempt_failed(address, "refused")
        self.clock.advance(1.0)
        self.assertEqual(board.admit(SHOP), (A, B, C))
        self.assertEqual(self.state(board, A).state, HealthState.PROBING)

    def test_instance_released_after_its_app_is_dropped(self):
        """A connection routed to an app that a reload then removed still releases its instance."""
        board = self.board()
        board.configure(parse_config({}))
        board.attempt_won(A)  # routed on the old router: no label, counted live
        board.record_closed(record(SHOP, A))
        self.assertEqual(board._instances[A].live, 0)

    def test_one_record_per_address(self):
        """An address shared by two apps has one health record."""
        board = self.board()
        board.attempt_failed(B, "refused")
        self.assertEqual(self.state(board, B, "blog").state, HealthState.EJECTED)
        self.assertEqual(self.state(board, B, "shop").state, HealthState.EJECTED)
        self.assertEqual(board.admit(SHOP), (A, C))

    def test_single_instance_always_tried(self):
        """An app with one instance always gets it (all its instances are ejected); success restores."""
        board = self.board()
        board.attempt_failed(B, "refused")
        self.assertEqual(board.admit(BLOG), (B,))
        board.attempt_won(B)
        self.assertEqual(self.state(board, B, "blog").state, HealthState.UP)

    def test_health_survives_reload(self):
        """A reload keeps live counts and health, and applies new settings."""
        board = self.board()
        self.connect(board)
        board.attempt_failed(B, "refused")
        board.configure(config('balance = "first"\nmax_connections = 2', "eject_base = 3.0"))
        self.assertEqual(self.state(board, A).live, 1)
        self.assertEqual(self.state(board, B).state, HealthState.EJECTED)
        self.assertEqual(board.admit(SHOP), (A, C))
        self.assertIsNone(board.admit(SHOP))
        board.attempt_failed(C, "refused")
        self.assertEqual(self.state(board, C).ejected_until, 3.0)


class PruneTests(BoardTestCase):
    def test_rotating_addresses_stay_bounded(self):
        """Addresses DNS once expanded an app to are forgotten when idle and up; declared, live and ejected ones stay."""
        from sniproxy import backends

        self.patch(backends, "_MAX_PLANS", 8)
        board = self.board()
        held = self.connect(board)  # a live connection on A
        board.attempt_failed(B, "refused")  # B ejected
        for n in range(50):
            rotated = Address(f"127.0.1.{n}", 443)
            route = Route(backends=(rotated,), source="txt", app="shop")
            board.attempt_won(board.admit(route)[0])
            board.record_closed(record(route, rotated))
        addresses = {s.address for s in board.instances() if s.app == "shop"}
        self.assertLessEqual(len(addresses), 3 + 8)
        self.assertTrue({str(A), str(B), str(C)} <= addresses)
        self.assertEqual(self.state(board, held).live, 1)
        self.assertEqual(self.state(board, B).state, HealthState.EJECTED)


class CapTests(BoardTestCase):
    def test_cap_refuses_then_admits_after_close(self):
        board = self.board("max_connections = 2")
        first = self.connect(board)
        self.connect(board)
        self.assertIsNone(board.admit(SHOP))
        board.record_closed(record(SHOP, None, Outcome.OVER_LIMIT))
        self.assertEqual(board.live("shop"), 2)
        board.record_closed(record(SHOP, first))
        self.assertEqual(board.live("shop"), 1)
        self.assertIsNotNone(board.admit(SHOP))

    def test_zero_is_no_limit(self):
        board = self.board()
        for _ in range(100):
            self.assertIsNotNone(board.admit(SHOP))


class CountersTests(BoardTestCase):
    def collect(self, board: BackendBoard) -> CollectorRegistry:
        registry = CollectorRegistry()
        registry.register(board.collector())
        return registry

    def test_app_counters_and_label_values(self):
        """Per-app series are labelled by app id and the fixed route-source labels only."""
        board = self.board()
        address = self.connect(board)
        board.record_closed(record(SHOP, address, up=100, down=2000))
        board.admit(SHOP)
        board.record_closed(record(SHOP, None, Outcome.BACKEND_UNREACHABLE))
        static = Route(backends=(A,), source="static")
        board.admit(static)
        registry = self.collect(board)
        value = registry.get_sample_value
        self.assertEqual(value("sniproxy_app_connections_total", {"app": "shop", "outcome": "relayed"}), 1)
        self.assertEqual(value("sniproxy_app_connections_total", {"app": "shop", "outcome": "backend unreachable"}), 1)
        self.assertEqual(value("sniproxy_app_bytes_total", {"app": "shop", "direction": "up"}), 100)
        self.assertEqual(value("sniproxy_app_bytes_total", {"app": "shop", "direction": "down"}), 2000)
        self.assertEqual(value("sniproxy_app_live_connections", {"app": "shop"}), 0)
        self.assertEqual(value("sniproxy_app_live_connections", {"app": "static"}), 1)
        apps = {s.labels["app"] for m in registry.collect() for s in m.samples if "app" in s.labels}
        self.assertEqual(apps, {"shop", "blog", "static", "subdomain", "txt", "system", "fallback"})
        self.assertEqual(value("sniproxy_backend_up", {"app": "shop", "address": "127.0.0.1:9001"}), 1)
        self.assertEqual(value("sniproxy_backend_live_connections", {"app": "shop", "address": "127.0.0.1:9001"}), 0)

    def test_backend_up_follows_health(self):
        board = self.board()
        board.attempt_failed(B, "refused")
        value = self.collect(board).get_sample_value
        self.assertEqual(value("sniproxy_backend_up", {"app": "shop", "address": "127.0.0.2:9002"}), 0)
        self.assertEqual(value("sniproxy_backend_up", {"app": "blog", "address": "127.0.0.2:9002"}), 0)
        self.assertEqual(value("sniproxy_backend_up", {"app": "shop", "address": "127.0.0.1:9001"}), 1)
        self.assertEqual(value("sniproxy_backend_connect_failures_total", {"app": "shop", "address": "127.0.0.2:9002"}), 1)

    def test_removed_app_leaves_once_drained(self):
        """An app dropped by a reload is exported until its last live connection closes."""
        board = self.board()
        address = self.connect(board)
        import tomllib

        board.configure(parse_config(tomllib.loads('[apps.blog]\nbackends = ["127.0.0.2:9002"]\n')))
        self.assertEqual(board.live("shop"), 1)
        board.record_closed(record(SHOP, address))
        self.assertEqual(board.live("shop"), 0)
        apps = {s.labels["app"] for m in self.collect(board).collect() for s in m.samples if "app" in s.labels}
        self.assertNotIn("shop", apps)

    def test_instances_in_config_order(self):
        board = self.board()
        self.assertEqual(
            [(s.app, s.address, s.state) for s in board.instances()],
            [
                ("shop", "127.0.0.1:9001", HealthState.UP),
                ("shop", "127.0.0.2:9002", HealthState.UP),
                ("shop", "127.0.0.3:9003", HealthState.UP),
                ("blog", "127.0.0.2:9002", HealthState.UP),
            ],
        )

    def test_instances_without_port_known_once_routed(self):
        """An instance without its own port is listed once a route has named its port."""
        import tomllib

        self.clock = Clock()
        board = BackendBoard(self.clock)
        board.configure(parse_config(tomllib.loads('[apps.shop]\nbackends = ["127.0.0.1", "127.0.0.2"]\n')))
        self.assertEqual(board.instances(), [])
        board.admit(Route(backends=(Address("127.0.0.1", 443), Address("127.0.0.2", 443)), source="txt", app="shop"))
        self.assertEqual([s.address for s in board.instances()], ["127.0.0.1:443", "127.0.0.2:443"])


class ConfigKeysTests(SynchronousTestCase):
    def parse(self, text: str):
        import tomllib

        return parse_config(tomllib.loads(text))

    def test_defaults(self):
        parsed = self.parse('[apps.shop]\nbackends = ["127.0.0.1:1"]\n')
        self.assertEqual((parsed.apps["shop"].balance, parsed.apps["shop"].max_connections), ("least-connections", 0))
        proxy = parsed.proxy
        self.assertEqual((proxy.eject_base, proxy.eject_max, proxy.allow_clients, proxy.deny_clients), (1.0, 30.0, (), ()))

    def test_values(self):
        parsed = self.parse(
            '[proxy]\nallow_clients = ["10.0.0.0/8"]\ndeny_clients = ["10.1.2.3"]\neject_base = 0.5\neject_max = 8\n'
            '[apps.shop]\nbackends = ["127.0.0.1:1"]\nbalance = "random"\nmax_connections = 7\n'
        )
        self.assertEqual(parsed.proxy.allow_clients, ("10.0.0.0/8",))
        self.assertEqual(parsed.proxy.deny_clients, ("10.1.2.3/32",))
        self.assertEqual((parsed.proxy.eject_base, parsed.proxy.eject_max), (0.5, 8.0))
        self.assertEqual((parsed.apps["shop"].balance, parsed.apps["shop"].max_connections), ("random", 7))

    def test_bad_values_name_the_key(self):
        for text, key in [
            ('[apps.shop]\nbackends = ["127.0.0.1:1"]\nbalance = "round-robin"\n', "apps.shop.balance"),
            ('[apps.shop]\nbackends = ["127.0.0.1:1"]\nmax_connections = -1\n', "apps.shop.max_connections"),
            ('[proxy]\nallow_clients = ["10.0.0.0/33"]\n', "proxy.allow_clients[0]"),
            ('[proxy]\ndeny_clients = "10.0.0.0/8"\n', "proxy.deny_clients"),
            ("[proxy]\neject_base = 0\n", "proxy.eject_base"),
            ("[proxy]\neject_base = 10\neject_max = 5\n", "proxy.eject_max"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                self.parse(text)
            self.assertTrue(str(caught.exception).startswith(key), (text, str(caught.exception)))
