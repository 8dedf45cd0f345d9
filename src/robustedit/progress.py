"""Progress bars for long loops (tqdm on stderr, silent when disabled or not a terminal in CI)."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress(iterable, *, desc: str, disable: bool = False, total: int | None = None):
    quiet = disable or os.environ.get("ROBUSTEDIT_QUIET") == "1"
    return tqdm(iterable, desc=desc, total=total, disable=quiet, file=sys.stderr, leave=False, dynamic_ncols=True)
