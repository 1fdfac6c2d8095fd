"""
Test helpers for sniproxy and for code that uses it: real servers on
loopback (an authoritative DNS server you control, TLS backends with their
own certificate authority) and ClientHello builders.  Nothing here is a
mock: each helper speaks the real protocol over real sockets.
"""
