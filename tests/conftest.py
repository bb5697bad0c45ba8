"""Suite-wide setup: every test talks to servers on loopback only.

A developer's or CI runner's proxy settings (needed to reach package registries)
must not reroute the gateway's loopback upstream calls, which now honour
``HTTPS_PROXY``/``HTTP_PROXY``; tests that exercise proxies set their own.
"""

import os

for _name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
    os.environ.pop(_name, None)
    os.environ.pop(_name.upper(), None)
