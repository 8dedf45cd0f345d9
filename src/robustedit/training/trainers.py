"""Which editors can be trained, and the one call ``robustedit train NAME`` makes.

An editor is trainable when it declares its training task (``Editor.trainer``, "module:Class");
add-ons inherit their base's (``mend+sss`` trains with MEND's task and its own SSS settings).
"""

from __future__ import annotations

import importlib
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from robustedit.editors import EDITORS
from robustedit.editors.trained import default_dir, training_seed
from robustedit.errors import UserError
from robustedit.training.loop import TrainTask, run_training


def trainable() -> list[str]:
    """The registered editors ``robustedit train`` takes."""
    return [n for n in EDITORS.names() if EDITORS.get(n).trainer]


def task_class(name: str) -> type[TrainTask]:
    """The training task of editor ``name``; a one-line error for an editor that is not trained."""
    cls = EDITORS.get(name)
    if not cls.trainer:
        raise UserError(f"{name} is not trained (it edits in closed form or by optimisation at edit "
                        f"time); trainable editors: {', '.join(trainable())}")
    module, attr = cls.trainer.split(":")
    return getattr(importlib.import_module(module), attr)


def train_editor(name: str, lm, config, out: Path | None = None, resume: bool = False) -> tuple[Path, dict[str, Any]]:
    """Train editor ``name`` for ``lm``; the trained editor goes to ``out`` (default: the folder
    the editor loads from when no ``checkpoint`` is set, one per training seed). Returns the folder
    and its metadata."""
    make = task_class(name)
    out = out or default_dir(name, lm, training_seed(config))
    task = make(lm, config, name)
    meta = {"editor": name, "model": lm.name, "fingerprint": lm.fingerprint, "config": asdict(config),
            "command": "robustedit " + shlex.join(sys.argv[1:])}
    return out, run_training(task, out, config.train, meta=meta, resume=resume, desc=f"training {name}")
