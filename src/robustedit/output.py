"""Writing result files once: atomic writes (a reader never sees half a file) and figures.

Figures are drawn on an Agg canvas without pyplot, so nothing global (backend, current figure)
changes and no window can open.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A sibling temporary path to write ``path``'s new content to; it replaces ``path`` when the
    block ends without an exception (a rename, atomic on one file system) and is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp" + path.suffix)  # keeps the suffix: savefig and torch.save read it
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write a file so that a reader never sees half of it."""
    with staged(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def write_json(path: Path, data: Any, indent: int = 2) -> Path:
    """``data`` as UTF-8 JSON (non-ASCII kept readable), written atomically."""
    atomic_write(Path(path), json.dumps(data, indent=indent, ensure_ascii=False, default=str) + "\n")
    return Path(path)


def figure(width: float = 6.0, height: float = 4.0, rows: int = 1, cols: int = 1):
    """A figure and its axes (one ``Axes``, or an array for a grid) on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(fig)
    if rows == cols == 1:
        return fig, fig.add_subplot()
    return fig, fig.subplots(rows, cols, squeeze=False)


def save_figure(fig, path: Path) -> Path:
    """Lay out and write ``fig`` as a PNG, atomically."""
    fig.tight_layout()
    with staged(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
