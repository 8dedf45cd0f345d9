"""Progress bars for long loops (tqdm on stderr, silent when disabled or not a terminal in CI).

Bars inside one edit (value-optimisation steps, MEMIT's layers) are *detail* bars: shown only
inside ``with detail():``, which commands whose main work is one edit (``robustedit edit``,
``generate``) open. An evaluation of hundreds of cases keeps its one bar per run.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from tqdm.auto import tqdm

_DETAIL: ContextVar[bool] = ContextVar("robustedit_detail_progress", default=False)


def _quiet() -> bool:
    return os.environ.get("ROBUSTEDIT_QUIET") == "1"


def progress(iterable, *, desc: str, disable: bool = False, total: int | None = None):
    return tqdm(iterable, desc=desc, total=total, disable=disable or _quiet(), file=sys.stderr, leave=False,
                dynamic_ncols=True)


@contextmanager
def detail() -> Iterator[None]:
    """Show the bars inside an edit while the block runs."""
    token = _DETAIL.set(True)
    try:
        yield
    finally:
        _DETAIL.reset(token)


def detail_bar(total: int, desc: str):
    """A bar for the steps inside one edit (``update()``, ``set_postfix``), silent outside ``detail()``."""
    return tqdm(total=total, desc=desc, disable=not _DETAIL.get() or _quiet(), file=sys.stderr, leave=False,
                dynamic_ncols=True)
