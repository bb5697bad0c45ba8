"""Where thrifty keeps its state by default."""

from __future__ import annotations

import os
from pathlib import Path


def default_data_dir() -> Path:
    """``$THRIFTY_DATA_DIR``, else ``./.thrifty``."""
    return Path(os.environ.get("THRIFTY_DATA_DIR") or ".thrifty")
