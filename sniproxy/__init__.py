"""sniproxy: a TLS passthrough proxy that routes by the ClientHello's server name."""

__version__ = "0.1.0"
