"""Which editors can be trained, and the one call ``robustedit train NAME`` makes."""

from __future__ import annotations

import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from robustedit.registry import Registry
from robustedit.training.files import default_dir
from robustedit.training.loop import TrainTask, run_training

# name → (lm, config, editor name) → TrainTask
TRAINERS: Registry[Callable[..., TrainTask]] = Registry("trainable editor")


def _register_all() -> None:
    from robustedit.training.mend import MENDTask
    from robustedit.training.serac import SERACTask

    for name in ("mend", "mend+sss"):
        TRAINERS.register(name, MENDTask)
    for name in ("serac", "serac+sss"):
        TRAINERS.register(name, SERACTask)


_register_all()


def train_editor(name: str, lm, config, out: Path | None = None, resume: bool = False) -> tuple[Path, dict[str, Any]]:
    """Train editor ``name`` for ``lm``; the trained editor goes to ``out`` (default: the folder
    the editor loads from when no ``checkpoint`` is set). Returns the folder and its metadata."""
    make = TRAINERS.get(name)
    out = out or default_dir(name, lm)
    task = make(lm, config, name)
    meta = {"editor": name, "model": lm.name, "fingerprint": lm.fingerprint, "config": asdict(config),
            "command": "robustedit " + shlex.join(sys.argv[1:])}
    return out, run_training(task, out, config.train, meta=meta, resume=resume, desc=f"training {name}")
