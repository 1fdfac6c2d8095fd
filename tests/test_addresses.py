"""Backend host names to IP addresses, through the DNS layer."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from sniproxy.addresses import AddressResolver
from sniproxy.dns.cache import Answer
from sniproxy.interfaces import Address, RoutingError


def answer(name: str, kind: int, *addresses: str, negative: str | None = None) -> Answer:
    payload = dns.Record_A if kind == dns.A else dns.Record_AAAA
    records = tuple(dns.RRHeader(name, kind, ttl=60, payload=payload(a)) for a in addresses)
    return Answer(name, kind, records, (), (), negative, "hit", 60.0)


class Scripted:
    def __init__(self, answers: dict) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []

    def query(self, name, kind):
        self.asked.append((name, kind))
        found = self.answers.get((name, kind))
        return Deferred() if found is None else succeed(found)


class AddressResolverTests(SynchronousTestCase):
    def test_literals_need_no_dns(self):
        backends = (Address("127.0.0.1", 1), Address("::1", 2))
        self.assertIs(self.successResultOf(AddressResolver(None).expand(backends)), backends)

    def test_a_records_first_aaaa_only_without_them(self):
        dns_ = Scripted(
            {
                ("v4.example", dns.A): answer("v4.example", dns.A, "10.0.0.1", "10.0.0.2"),
                ("v6.example", dns.A): answer("v6.example", dns.A, negative="nodata"),
                ("v6.example", dns.AAAA): answer("v6.example", dns.AAAA, "fd00::1"),
            }
        )
        backends = self.successResultOf(
            AddressResolver(dns_).expand((Address("v4.example", 443), Address("127.0.0.9", 8443), Address("v6.example", 443)))
        )
        self.assertEqual(
            backends,
            (Address("10.0.0.1", 443), Address("10.0.0.2", 443), Address("127.0.0.9", 8443), Address("fd00::1", 443)),
        )
        self.assertEqual(dns_.asked, [("v4.example", dns.A), ("v6.example", dns.A), ("v6.example", dns.AAAA)])

    def test_nxdomain(self):
        dns_ = Scripted({("gone.example", dns.A): answer("gone.example", dns.A, negative="nxdomain")})
        failure = self.failureResultOf(AddressResolver(dns_).expand((Address("gone.example", 1),)), RoutingError)
        self.assertEqual(str(failure.value), "backend 'gone.example' does not exist (NXDOMAIN)")

    def test_cancel_is_not_a_routing_failure(self):
        """Cancelling (client gone, deadline passed) stays a cancellation."""
        d = AddressResolver(Scripted({})).expand((Address("backend.example", 443),))
        d.cancel()
        self.failureResultOf(d, CancelledError)
