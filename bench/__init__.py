"""The sniproxy benchmark: C{python bench/run.py --help}.  (C{leaks.py} is a separate script.)"""
