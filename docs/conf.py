"""
Sphinx configuration for the sniproxy manual.

Build it with C{sphinx-build -W -b html docs docs/_build/html} (CI does, in
a virtualenv with the C{docs} extra).  Nothing is fetched at build time: no
intersphinx, the bundled alabaster theme.
"""

import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
# The configuration reference imports sniproxy.config from this checkout,
# so the reference describes the code next to it, installed or not.
sys.path.insert(0, os.path.dirname(here))
sys.path.insert(0, os.path.join(here, "_ext"))

import sniproxy  # noqa: E402

project = "sniproxy"
author = "the sniproxy authors"
copyright = "the sniproxy authors"
release = version = sniproxy.__version__

extensions = ["sniproxy_config"]

# Fields of sniproxy.config's dataclasses without an "@ivar name:" line
# are listed at build time; once every field is documented, set this to
# True and an undocumented field fails the build (warnings fail with -W).
sniproxy_config_strict = True

root_doc = "index"
exclude_patterns = ["_build"]
templates_path = []
html_theme = "alabaster"
html_static_path = []
html_theme_options = {
    "description": "TLS passthrough by SNI, on Twisted",
    "fixed_sidebar": False,
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
highlight_language = "none"
pygments_style = "sphinx"
nitpicky = False
