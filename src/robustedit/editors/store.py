"""Saving an edit to disk, re-applying it to a fresh model, and undoing it exactly.

A saved edit is a folder with ``delta.safetensors`` (the additive changes), ``original.safetensors``
(the touched parameters before the edit, so undo is a copy, bit-exact) and ``manifest.json``
(editor, config, requests, the model's fingerprint). Loading onto another model is refused.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from robustedit import __version__
from robustedit.editors.base import Backup, Delta, apply_delta
from robustedit.errors import UserError
from robustedit.models.load import LanguageModel
from robustedit.request import EditRequest


def save_edit(out_dir: Path, lm: LanguageModel, delta: Delta, requests: list[EditRequest], config: dict) -> Path:
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    params = dict(lm.model.named_parameters())
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        stage = Path(tmp) / "edit"
        stage.mkdir()
        save_file({k: v.contiguous() for k, v in delta.weights.items()}, str(stage / "delta.safetensors"))
        save_file({k: params[k].detach().contiguous() for k in delta.weights}, str(stage / "original.safetensors"))
        manifest = {
            "robustedit": __version__,
            "model": lm.name,
            "model_fingerprint": lm.fingerprint,
            "editor": delta.info.get("editor"),
            "config": config,
            "requests": [asdict(r) for r in requests],
            "info": delta.info,
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        if out_dir.exists():
            raise UserError(f"{out_dir} already exists; choose another --save folder")
        os.replace(stage, out_dir)
    return out_dir


def _read(dir_: Path, lm: LanguageModel) -> tuple[dict, Delta, dict[str, torch.Tensor]]:
    dir_ = Path(dir_)
    try:
        manifest = json.loads((dir_ / "manifest.json").read_text())
        delta = load_file(str(dir_ / "delta.safetensors"))
        original = load_file(str(dir_ / "original.safetensors"))
    except (OSError, ValueError) as e:
        raise UserError(f"{dir_} is not a saved robustedit edit ({e})") from None
    if manifest.get("model_fingerprint") != lm.fingerprint:
        raise UserError(f"{dir_} was made for model {manifest.get('model')!r} "
                        f"({manifest.get('model_fingerprint')}), not {lm.name!r} ({lm.fingerprint})")
    return manifest, Delta(delta, manifest.get("info", {})), original


def load_edit(dir_: Path, lm: LanguageModel) -> Backup:
    """Apply a saved edit to ``lm``; the returned backup undoes it."""
    _, delta, _ = _read(dir_, lm)
    return apply_delta(lm, delta)


@torch.no_grad()
def undo_saved(dir_: Path, lm: LanguageModel) -> None:
    """Put back the parameters a saved edit touched, exactly as they were before it."""
    _, _, original = _read(dir_, lm)
    params = dict(lm.model.named_parameters())
    for name, value in original.items():
        params[name].copy_(value)
