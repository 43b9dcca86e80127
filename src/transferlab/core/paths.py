"""Where transferlab keeps converted weights and caches on the user's machine."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$TRANSFERLAB_CACHE, else $XDG_CACHE_HOME/transferlab, else ~/.cache/transferlab."""
    root = os.environ.get("TRANSFERLAB_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "transferlab"
