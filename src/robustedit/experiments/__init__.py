"""Named end-to-end experiments for ``robustedit reproduce NAME`` (one module each)."""

from __future__ import annotations

from robustedit.experiments.base import Experiment, Options, evaluate_variant, finished
from robustedit.registry import Registry

EXPERIMENTS: Registry[Experiment] = Registry("experiment")


def register(cls: type[Experiment]) -> type[Experiment]:
    """Class decorator: one instance of the experiment under its name."""
    EXPERIMENTS.register(cls.name, cls())
    return cls


def _register_all() -> None:
    from robustedit.experiments import rep_table, sequential, sss_study, sss_table  # noqa: F401  (they register themselves)


_register_all()

__all__ = ["EXPERIMENTS", "Experiment", "Options", "evaluate_variant", "finished", "register"]
