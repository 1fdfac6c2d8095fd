"""The C{twistd sniproxy} plugin.  Everything lives in L{sniproxy.tap}."""

from twisted.application.service import ServiceMaker

sniproxy = ServiceMaker(
    "sniproxy",
    "sniproxy.tap",
    "TLS passthrough proxy that routes by SNI",
    "sniproxy",
)
