"""
Route sources: each one implements L{sniproxy.interfaces.IResolver}.
L{sniproxy.assembly.make_source} builds the one a C{routing.sources} entry
names.
"""
