"""A trained editor on disk, and the training-loop settings its config carries.

A trained editor on disk: ``editor.safetensors`` (its networks' weights) + ``editor.json``.

The JSON says which editor and which model the weights were trained for (the model's weights
fingerprint, so an editor trained on one model is never silently used with another), the full
config it was trained with, and how the training went. ``robustedit train NAME`` writes it;
the editor loads it from ``checkpoint=PATH`` or, by default, from the cache folder the trainer
writes to when no ``--out`` is given: one per model and training seed (``train.seed``), so the
networks of several seeds sit side by side and ``--set train.seed=S`` picks one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from robustedit.errors import UserError
from robustedit.paths import cache_root

WEIGHTS, META = "editor.safetensors", "editor.json"


def default_dir(editor: str, lm, seed: int = 0) -> Path:
    """Where ``robustedit train EDITOR`` puts the trained editor of ``lm`` (trained with ``seed``)
    unless told otherwise. Seed 0 keeps the folder name it had before seeds were named."""
    key = hashlib.sha256(lm.fingerprint.encode()).hexdigest()[:12]  # the weights, in a path-safe form
    return cache_root() / "trained" / editor / (f"{Path(lm.name).name}-{key}" + (f"-seed{seed}" if seed else ""))


def training_seed(config: Any) -> int:
    return getattr(getattr(config, "train", None), "seed", 0)


def save_trained(folder: Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / WEIGHTS))
    (folder / META).write_text(json.dumps(meta, indent=2, default=str))


def load_trained(folder: str | Path | None, editor: str, lm, config: Any = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and metadata of ``editor`` trained for ``lm``; one-line errors otherwise.

    With ``config`` (the editor's settings), its SSS settings and training seed must be those the
    network was trained with: they act in training only, so an edit made under others would be
    recorded with settings that did not make it."""
    base = editor.split("+", 1)[0]
    seed = training_seed(config)
    path = Path(folder) if folder else default_dir(editor, lm, seed)
    train_cmd = (f"robustedit train {editor}" + ("" if lm.name == "smollm2" else f" --model {lm.name}")
                 + (f" --seed {seed}" if seed else ""))
    if not (path / WEIGHTS).is_file() or not (path / META).is_file():
        where = f"in {path}" if folder else f"for {lm.name} (looked in {path})"
        raise UserError(f"no trained {editor} editor {where}; train it first with `{train_cmd}`"
                        + (f" --out {path}" if folder else "") + ", or pass --set checkpoint=DIR")
    meta = json.loads((path / META).read_text())
    if meta.get("editor", "").split("+", 1)[0] != base:
        raise UserError(f"{path} holds a trained {meta.get('editor')!r} editor, not {base!r}")
    if meta.get("fingerprint") != lm.fingerprint:
        raise UserError(f"{path} was trained for another model ({meta.get('model')}, weights "
                        f"{str(meta.get('fingerprint'))[:12]}), not {lm.name} ({lm.fingerprint[:12]}); "
                        f"train it for this model with `{train_cmd}`")
    wanted = getattr(config, "sss", None)
    trained = meta.get("config", {}).get("sss")
    if wanted is not None and trained is not None and asdict(wanted) != trained:
        differ = ", ".join(f"sss.{k}={v} (trained with {trained.get(k)})"
                           for k, v in asdict(wanted).items() if trained.get(k) != v)
        raise UserError(f"{path} was trained with other SSS settings: {differ}; SSS acts in training only, so "
                        f"train one with them (`{train_cmd} --set ...`) and pass --set checkpoint=DIR")
    trained_seed = meta.get("config", {}).get("train", {}).get("seed", 0)
    if config is not None and trained_seed != seed:
        raise UserError(f"{path} was trained with train.seed={trained_seed}, not {seed}; pass --set "
                        f"train.seed={trained_seed} with it, or train one with `{train_cmd}`")
    return load_file(str(path / WEIGHTS), device=str(lm.device)), meta


@dataclass(frozen=True)
class LoopConfig:
    steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    val_every: int = field(default=250, metadata={"help": "validate every N steps (and at the end); 0 = only at the end"})
    save_every: int = field(default=50, metadata={"help": "write a resumable checkpoint every N steps"})
    log_every: int = field(default=10, metadata={"help": "write the running training losses every N steps"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of the training file held back for validation (its tail)"})
    val_cases: int = field(default=50, metadata={"help": "validation cases scored at each validation"})

    def __post_init__(self) -> None:
        if self.steps < 1 or self.save_every < 1 or self.log_every < 1 or self.val_every < 0:
            raise UserError("train.steps, train.save_every and train.log_every must be >= 1, train.val_every >= 0")
        if not 0 < self.val_fraction < 1 or self.val_cases < 1:
            raise UserError("train.val_fraction must be in (0, 1) and train.val_cases >= 1")
