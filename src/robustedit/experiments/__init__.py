"""Named end-to-end experiments for ``robustedit reproduce NAME`` (one module each)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from robustedit.registry import Registry


@dataclass(frozen=True)
class Experiment:
    name: str
    help: str
    run: Callable[..., dict]


EXPERIMENTS: Registry[Experiment] = Registry("experiment")


def _register_all() -> None:
    from robustedit.experiments import rep_table, sequential, sss_study, sss_table  # noqa: F401  (they register themselves)


_register_all()
