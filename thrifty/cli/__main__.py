"""``python -m thrifty.cli``: the ``thrifty`` command without its console script."""

import sys

from thrifty.cli import main

sys.exit(main())
