"""Saving a sequence of edits to disk, re-applying it to a fresh model, and undoing it exactly.

A saved edit is a folder (a single edit is a sequence of one step):

* ``original.safetensors``: every touched parameter as it was before the first edit (undo is a
  copy, so it is bit-exact);
* ``edited.safetensors``: every touched parameter after the last edit (loading is a copy too: the
  loaded model is bit-identical to the one edited step by step, which adding a summed delta would
  not be in floating point);
* ``delta.safetensors``: ``edited - original``, for inspection;
* ``manifest.json``: robustedit version, model name and fingerprint, editor, config, and one entry
  per step (``case_ids``, ``requests``, the delta's ``info``);
* ``adaptors.safetensors`` (only if some step installed key adaptors, e.g. REP): their parameters,
  ``<i>.<parameter>`` for the i-th entry of the manifest's ``adaptors`` list (module, tag, config).

Per-step deltas are not kept: 1000 steps of MEMIT on three 1536×576 matrices would be gigabytes.
Folders written before ``edited.safetensors`` existed (one edit, no ``steps``) still load, by
adding their delta. Loading onto another model, or onto a model that already carries an edit on
the same parameters, is refused.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robustedit import __version__
from robustedit.editors.adaptors import AdaptorStack, KeyAdaptor, install, uninstall
from robustedit.editors.base import Backup, Delta, apply_delta, check_finite, non_finite
from robustedit.editors.memory import MemoryEdit
from robustedit.errors import UserError
from robustedit.models.load import LanguageModel
from robustedit.request import EditRequest

MEMORY_NOT_SAVED = ("edits kept in an edit memory (SERAC) cannot be saved as a delta yet; "
                    "the trained editor and the requests reproduce them (use --no-save-edits)")
FORMAT = 3  # 1: one edit, delta + original; 2: steps + edited.safetensors; 3: + key adaptors


def _step(delta: Delta, requests: list[EditRequest], case_ids: list[str] | None) -> dict[str, Any]:
    if case_ids is not None and len(case_ids) != len(requests):
        raise ValueError(f"{len(case_ids)} case ids for {len(requests)} requests")
    return {"case_ids": None if case_ids is None else list(case_ids),
            "requests": [{k: v for k, v in asdict(r).items() if k != "in_domain"} for r in requests],
            "info": dict(delta.info)}


class EditSequence:
    """Deltas applied to ``lm`` one after another, recorded so they can be saved and undone exactly.

    Cheap per step: a parameter is snapshotted the first time a delta touches it, never again.

    >>> seq = EditSequence(lm)
    >>> for batch in batches:
    ...     seq.apply(editor.edit(batch), batch)
    >>> seq.save(Path("edits"), editor.name, config)
    >>> seq.undo()                                 # lm is bit-identical to before the first apply
    """

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.originals: dict[str, torch.Tensor] = {}  # name → value before the first step touched it
        self.adaptors: list[tuple[str, KeyAdaptor]] = []  # (module name, adaptor) in the order installed
        self.memory: list[MemoryEdit] = []  # edits kept outside the weights (SERAC)
        self.steps: list[dict[str, Any]] = []

    def apply(self, delta: Delta, requests: list[EditRequest], case_ids: list[str] | None = None) -> None:
        step = _step(delta, requests, case_ids)
        backup = apply_delta(self.lm, delta)  # its copies of the touched values are the snapshots
        for name, value in backup.originals.items():
            self.originals.setdefault(name, value)
        self.adaptors += backup.adaptors
        self.memory += backup.memory
        self.steps.append(step)

    def undo(self) -> None:
        """Put every touched parameter back as it was before the first step, remove every adaptor
        the steps installed; forget the steps."""
        Backup(self.originals, self.lm.model, self.adaptors, self.memory).restore()
        self.originals, self.adaptors, self.memory, self.steps = {}, [], [], []

    def save(self, out_dir: Path, editor_name: str | None, config: dict) -> Path:
        """Write the sequence to ``out_dir`` (which must not exist); the model is left as it is."""
        if not self.steps:
            raise UserError("no edits to save: the sequence is empty")
        if self.memory:
            raise UserError(MEMORY_NOT_SAVED)
        params = dict(self.lm.model.named_parameters())
        edited = {n: params[n].detach() for n in self.originals}
        return _write(Path(out_dir), self.lm, self.originals, edited, self.steps, editor_name, config, self.adaptors)


def save_edit(out_dir: Path, lm: LanguageModel, delta: Delta, requests: list[EditRequest], config: dict,
              case_ids: list[str] | None = None) -> Path:
    """Write one edit (``lm`` as it was before ``delta``, which editors leave it) to ``out_dir``."""
    if delta.memory:
        raise UserError(MEMORY_NOT_SAVED)
    check_finite(delta)
    params = dict(lm.model.named_parameters())
    missing = [n for n in delta.weights if n not in params]
    if missing:
        raise KeyError(f"the delta names parameters this model does not have: {missing}")
    original = {n: params[n].detach() for n in delta.weights}
    # the same arithmetic as apply_delta, on copies: the model is not touched
    edited = {n: p.clone().add_(delta.weights[n].to(p.dtype)) for n, p in original.items()}
    return _write(Path(out_dir), lm, original, edited, [_step(delta, requests, case_ids)],
                  delta.info.get("editor"), config, list(delta.adaptors.items()))


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _write(out_dir: Path, lm: LanguageModel, original: dict[str, torch.Tensor], edited: dict[str, torch.Tensor],
           steps: list[dict[str, Any]], editor_name: str | None, config: dict,
           adaptors: list[tuple[str, KeyAdaptor]] = ()) -> Path:
    """Stage the folder next to ``out_dir`` and move it into place in one rename."""
    if out_dir.exists():
        raise UserError(f"{out_dir} already exists; choose another folder to save the edit in")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    original, edited = _cpu(original), _cpu(edited)
    delta = {}
    for name, before in original.items():
        wide = torch.promote_types(before.dtype, torch.float32)  # a bf16 difference in float32
        delta[name] = edited[name].to(wide) - before.to(wide)
    manifest = {
        "robustedit": __version__,
        "format": FORMAT if adaptors else 2,  # folders without adaptors stay readable by format-2 readers
        "model": lm.name,
        "model_fingerprint": lm.fingerprint,
        "editor": editor_name,
        "config": config,
        "n_steps": len(steps),
        "steps": steps,
    }
    if adaptors:
        manifest["adaptors"] = [{"module": name, "tag": a.tag(), "config": a.config()} for name, a in adaptors]
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        stage = Path(tmp) / "edit"
        stage.mkdir()
        save_file(original, str(stage / "original.safetensors"))
        save_file(edited, str(stage / "edited.safetensors"))
        save_file(delta, str(stage / "delta.safetensors"))
        if adaptors:
            save_file({f"{i}.{k}": v.detach().cpu().contiguous() for i, (_, a) in enumerate(adaptors)
                       for k, v in a.state_dict().items()}, str(stage / "adaptors.safetensors"))
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        if out_dir.exists():  # os.replace would quietly take the place of an empty folder
            raise UserError(f"{out_dir} already exists; choose another folder to save the edit in")
        os.replace(stage, out_dir)
    return out_dir


def _load(path: Path, dir_: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(str(path), device="cpu")
    except (OSError, ValueError, SafetensorError) as e:
        raise UserError(f"{dir_} is not a saved robustedit edit ({path.name}: {e})") from None
    if bad := non_finite(tensors):
        raise UserError(f"{dir_} is damaged: {path.name} holds non-finite values (NaN or infinity) in {bad[0]}")
    return tensors


def _manifest(dir_: Path, lm: LanguageModel) -> dict[str, Any]:
    """The folder's manifest, once it is known to be a saved edit made for ``lm``'s weights."""
    try:
        manifest = json.loads((dir_ / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{dir_} is not a saved robustedit edit ({e})") from None
    if not isinstance(manifest, dict) or "model_fingerprint" not in manifest:
        raise UserError(f"{dir_} is not a saved robustedit edit (manifest.json names no model_fingerprint)")
    version = manifest.get("format", 1)
    if not isinstance(version, int) or version > FORMAT:
        raise UserError(f"{dir_} has edit format {version!r}, which robustedit {__version__} cannot read; upgrade it")
    if manifest["model_fingerprint"] != lm.fingerprint:
        raise UserError(f"{dir_} was made for model {manifest.get('model')!r} "
                        f"({manifest['model_fingerprint']}), not {lm.name!r} ({lm.fingerprint})")
    return manifest


def _check_fits(dir_: Path, lm: LanguageModel, tensors: dict[str, torch.Tensor]) -> dict[str, torch.nn.Parameter]:
    """The model's parameters named in ``tensors``, which must exist with the same shape and dtype."""
    params = dict(lm.model.named_parameters())
    bad = [n for n, t in tensors.items()
           if n not in params or params[n].shape != t.shape or params[n].dtype != t.dtype]
    if bad:
        raise UserError(f"{dir_} does not fit {lm.name!r}: parameters {bad[:3]} are missing or differ in shape or dtype")
    return {n: params[n] for n in tensors}


def load_edit(dir_: Path, lm: LanguageModel) -> Backup:
    """Apply a saved edit (or sequence of edits) to ``lm``; the returned backup undoes it exactly.

    ``lm`` must be the unedited model the edit was saved from (same fingerprint, and the touched
    parameters still equal to the saved originals).
    """
    dir_ = Path(dir_)
    manifest = _manifest(dir_, lm)
    original = _load(dir_ / "original.safetensors", dir_)
    params = _check_fits(dir_, lm, original)
    changed = [n for n, p in params.items() if not torch.equal(p.detach(), original[n].to(p.device))]
    if changed:
        raise UserError(f"cannot load {dir_}: the model already carries an edit of {changed[:3]} "
                        "(perhaps this one); undo it first")
    adaptors = _saved_adaptors(dir_, lm, manifest)
    if (dir_ / "edited.safetensors").exists():
        edited = _load(dir_ / "edited.safetensors", dir_)
        if edited.keys() != original.keys():
            raise UserError(f"{dir_} is damaged: edited.safetensors and original.safetensors name different parameters")
        with torch.no_grad():
            for name, value in edited.items():
                params[name].copy_(value)
        modules = dict(lm.model.named_modules())
        for name, adaptor in adaptors:
            install(modules[name], adaptor.to(lm.device))
        return Backup(original, lm.model, adaptors)
    delta = _load(dir_ / "delta.safetensors", dir_)  # format 1: a single edit, re-added
    if delta.keys() != original.keys():
        raise UserError(f"{dir_} is damaged: delta.safetensors and original.safetensors name different parameters")
    apply_delta(lm, Delta(delta))
    return Backup(original, lm.model)


def _saved_adaptors(dir_: Path, lm: LanguageModel, manifest: dict[str, Any]) -> list[tuple[str, KeyAdaptor]]:
    """The adaptors of a saved edit, rebuilt (not installed); refused if one is installed already."""
    entries = manifest.get("adaptors") or []
    if not entries:
        return []
    tensors = _load(dir_ / "adaptors.safetensors", dir_)
    modules = dict(lm.model.named_modules())
    out = []
    for i, entry in enumerate(entries):
        name = entry.get("module")
        if name not in modules:
            raise UserError(f"{dir_} does not fit {lm.name!r}: it adapts the keys of {name!r}, which the model lacks")
        try:
            adaptor = KeyAdaptor(**entry["config"])
            adaptor.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(i)})
        except (KeyError, TypeError, RuntimeError) as e:
            raise UserError(f"{dir_} is damaged: adaptor {i} cannot be rebuilt ({e})") from None
        if adaptor.tag() != entry.get("tag"):
            raise UserError(f"{dir_} is damaged: adaptor {i} does not match its tag in manifest.json")
        if any(a.tag() == entry["tag"] for a in AdaptorStack.installed(modules[name])):
            raise UserError(f"cannot load {dir_}: the model already carries its adaptor on {name} "
                            "(perhaps this edit); undo it first")
        out.append((name, adaptor))
    return out


@torch.no_grad()
def undo_saved(dir_: Path, lm: LanguageModel) -> None:
    """Put back the parameters a saved edit touched, exactly as they were before its first step,
    and remove the adaptors it installed (matched by tag)."""
    dir_ = Path(dir_)
    manifest = _manifest(dir_, lm)
    original = _load(dir_ / "original.safetensors", dir_)
    params = _check_fits(dir_, lm, original)
    for name, value in original.items():
        params[name].copy_(value)
    modules = dict(lm.model.named_modules())
    for entry in manifest.get("adaptors") or []:
        module = modules.get(entry.get("module"))
        for adaptor in AdaptorStack.installed(module) if module is not None else []:
            if adaptor.tag() == entry.get("tag"):
                uninstall(module, adaptor)
