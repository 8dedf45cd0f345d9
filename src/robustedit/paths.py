"""Where robustedit keeps its caches and finds its bundled resources."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def cache_root() -> Path:
    """``$ROBUSTEDIT_CACHE``, else ``$XDG_CACHE_HOME/robustedit``, else ``~/.cache/robustedit``."""
    if os.environ.get("ROBUSTEDIT_CACHE"):
        return Path(os.environ["ROBUSTEDIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "robustedit"


def resource(*parts: str) -> Path:
    """Path of a file shipped in ``robustedit/resources``."""
    return Path(str(resources.files("robustedit").joinpath("resources/" + "/".join(parts))))
