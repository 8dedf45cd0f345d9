"""Saved edit folders read back: loading them onto a model (stacked on edits already loaded),
undoing them exactly, and the format constants and checksums both sides share. Writing them is
``editors/store.py``, whose docstring describes the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from robustedit import __version__
from robustedit.editors.adaptors import AdaptorStack, KeyAdaptor, install, uninstall
from robustedit.editors.base import (
    Backup,
    add_to_weight,
    non_finite,
)
from robustedit.errors import UserError
from robustedit.models.load import LanguageModel

log = logging.getLogger(__name__)

MEMORY_NOT_SAVED = ("edits kept in an edit memory (SERAC) live outside the weights: they cannot be saved as a "
                    "delta yet, nor exported as plain weights; the trained editor and the requests reproduce "
                    "them (use --no-save-edits)")
FORMAT = 4  # 1: one edit, delta + original; 2: steps + edited.safetensors; 3: + key adaptors; 4: the delta once
CHECKED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # original_sha256 is recorded in each
LOADED = "_robustedit_loaded_edits"  # attribute of the model: the LoadedEdit backups in load order


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def checksum(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{dtype_name(t.dtype)}:{tuple(t.shape)}:".encode())
    if t.numel():
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


# --- edits loaded into a model --------------------------------------------------------------------

def loaded_edits(model: torch.nn.Module) -> list[LoadedEdit]:
    """The saved edits loaded into ``model`` (and not restored), in load order."""
    return list(getattr(model, LOADED, []))


@dataclass(eq=False)
class LoadedEdit(Backup):
    """The backup of one :func:`load_edit`: ``restore()`` puts back the values from before it.

    It is kept on the model (``loaded_edits``) until restored, with the checksums of the touched
    parameters before and after the load, so that later loads can tell stacking on saved edits
    from anything else, and ``undo_saved`` can find it.
    """

    edit_id: str = ""
    source: str = ""
    before: dict[str, str] = field(default_factory=dict)  # parameter → checksum before this load
    after: dict[str, str] = field(default_factory=dict)  # parameter → checksum after it

    def restore(self) -> None:
        loaded = getattr(self.model, LOADED, [])
        at = next((i for i, e in enumerate(loaded) if e is self), None)
        if at is None:
            return  # restored already
        later = [e.source for e in loaded[at + 1:] if e.before.keys() & self.before.keys()]
        if later:
            raise UserError(f"cannot undo {self.source} yet: edits loaded after it change the same weights "
                            f"({', '.join(later)}); undo those first")
        super().restore()
        del loaded[at]
        if not loaded and hasattr(self.model, LOADED):
            delattr(self.model, LOADED)


@dataclass(eq=False)
class LoadedEdits(Backup):
    """The backup of :func:`load_edits`: ``restore()`` undoes every part, last first."""

    parts: list[LoadedEdit] = field(default_factory=list)

    def restore(self) -> None:
        for part in reversed(self.parts):
            part.restore()


# --- reading --------------------------------------------------------------------------------------

def _load(path: Path, dir_: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(str(path), device="cpu")
    except (OSError, ValueError, SafetensorError) as e:
        raise UserError(f"{dir_} is not a saved robustedit edit ({path.name}: {e})") from None
    if bad := non_finite(tensors):
        raise UserError(f"{dir_} is damaged: {path.name} holds non-finite values (NaN or infinity) in {bad[0]}")
    return tensors


def read_manifest(dir_: Path) -> dict[str, Any]:
    """A saved edit's manifest (any format this version reads); refused if ``dir_`` is not one."""
    dir_ = Path(dir_)
    try:
        manifest = json.loads((dir_ / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{dir_} is not a saved robustedit edit ({e})") from None
    if not isinstance(manifest, dict) or "model_fingerprint" not in manifest:
        raise UserError(f"{dir_} is not a saved robustedit edit (manifest.json names no model_fingerprint)")
    version = manifest.get("format", 1)
    if not isinstance(version, int) or version > FORMAT:
        raise UserError(f"{dir_} has edit format {version!r}, which robustedit {__version__} cannot read; upgrade it")
    return manifest


def edit_id(dir_: Path, manifest: dict[str, Any] | None = None) -> str:
    """The saved edit's id: recorded since format 4, a hash of the manifest for earlier folders."""
    manifest = read_manifest(dir_) if manifest is None else manifest
    if manifest.get("format", 1) >= 4:
        if not isinstance(manifest.get("edit_id"), str):
            raise UserError(f"{dir_} is damaged: manifest.json records no edit_id")
        return manifest["edit_id"]
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:32]
    return f"v{manifest.get('format', 1)}:{digest}"


def _made_for(dir_: Path, manifest: dict[str, Any], lm: LanguageModel) -> str:
    return (f"{dir_} was made for model {manifest.get('model')!r} ({manifest['model_fingerprint']}), "
            f"not {lm.name!r} ({lm.fingerprint})")


@dataclass
class _Saved:
    """A saved edit read for one model: what to add, and the checksums it must be loaded on."""

    delta: dict[str, torch.Tensor]  # added (add_to_weight) when stacking, and on the base unless `edited`
    base: dict[str, str]  # parameter → checksum, in the model's dtype, of the values the edit was made on
    loaded: dict[str, str] = field(default_factory=dict)  # → checksum loading on `base` gives (if recorded)
    edited: dict[str, torch.Tensor] | None = None  # formats 2–3: copied in on `base` (exact, as before)
    original: dict[str, torch.Tensor] | None = None  # formats 1–3: for undo_saved without a backup


def _read(dir_: Path, manifest: dict[str, Any], lm: LanguageModel) -> _Saved:
    params = dict(lm.model.named_parameters())
    if manifest.get("format", 1) >= 4:
        meta = manifest.get("tensors")
        if not isinstance(meta, dict):
            raise UserError(f"{dir_} is not a saved robustedit edit (manifest.json lists no tensors)")
        delta = _load(dir_ / "delta.safetensors", dir_)
        if delta.keys() != meta.keys():
            raise UserError(f"{dir_} is damaged: delta.safetensors and manifest.json name different parameters")
        bad = [n for n, t in delta.items() if n not in params or tuple(params[n].shape) != tuple(t.shape)]
        if bad:
            raise UserError(f"{dir_} does not fit {lm.name!r}: parameters {bad[:3]} are missing or differ in shape")
        base, loaded = {}, {}
        for name, m in meta.items():
            have = dtype_name(params[name].dtype)
            try:
                sums, dtype, after = dict(m["original_sha256"]), m["dtype"], m["loaded_sha256"]
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{dir_} is damaged: manifest.json lacks the checksums of {name}") from None
            if have not in sums:
                raise UserError(f"{dir_} cannot be checked against {lm.name!r}: it records the original weights in "
                                f"{', '.join(sums)}, the model's {name} is {have}")
            base[name] = sums[have]
            if have == dtype:
                loaded[name] = after
        return _Saved(delta, base, loaded)
    original = _load(dir_ / "original.safetensors", dir_)
    bad = [n for n, t in original.items()
           if n not in params or params[n].shape != t.shape or params[n].dtype != t.dtype]
    if bad:
        raise UserError(f"{dir_} does not fit {lm.name!r}: parameters {bad[:3]} are missing or differ in shape or dtype")
    base = {n: checksum(t) for n, t in original.items()}
    if (dir_ / "edited.safetensors").exists():  # formats 2–3
        edited = _load(dir_ / "edited.safetensors", dir_)
        if edited.keys() != original.keys():
            raise UserError(f"{dir_} is damaged: edited.safetensors and original.safetensors name different parameters")
        diff = {n: edited[n].double() - original[n].double() for n in original}
        return _Saved(diff, base, {n: checksum(t) for n, t in edited.items()}, edited, original)
    delta = _load(dir_ / "delta.safetensors", dir_)  # format 1: a single edit, re-added
    if delta.keys() != original.keys():
        raise UserError(f"{dir_} is damaged: delta.safetensors and original.safetensors name different parameters")
    return _Saved(delta, base, {}, None, original)


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


# --- loading and undoing --------------------------------------------------------------------------

def load_edit(dir_: Path, lm: LanguageModel) -> LoadedEdit:
    """Apply a saved edit (or sequence of edits) to ``lm``, on top of the saved edits already loaded;
    the returned backup's ``restore()`` puts back exactly what ``lm`` held before this load.

    Refused, with the model unchanged: a folder that is not a saved edit, another model (module
    docstring: a model of another dtype is accepted by the checksums of the touched weights), an
    edit already loaded, touched weights that are neither those the edit was made on nor those plus
    saved edits loaded on top of them.
    """
    dir_ = Path(dir_)
    manifest = read_manifest(dir_)
    params = dict(lm.model.named_parameters())
    saved_dtypes = {n: m.get("dtype") for n, m in (manifest.get("tensors") or {}).items() if isinstance(m, dict)}
    other_dtype = any(n in params and dtype_name(params[n].dtype) != t for n, t in saved_dtypes.items())
    if manifest["model_fingerprint"] != lm.fingerprint and not other_dtype:
        raise UserError(_made_for(dir_, manifest, lm))
    saved = _read(dir_, manifest, lm)
    ident = edit_id(dir_, manifest)
    loaded = getattr(lm.model, LOADED, [])
    if again := next((e for e in loaded if e.edit_id == ident), None):
        raise UserError(f"cannot load {dir_}: the model already carries this edit (loaded from {again.source}); "
                        "undo it first")

    absent = [str(e.get("source")) for e in manifest.get("on_top_of") or []  # saved on a model carrying them
              if not any(x.edit_id == e.get("edit_id") for x in loaded)]
    before = {n: checksum(params[n]) for n in saved.base}
    on_base = {n: before[n] == saved.base[n] for n in saved.base}
    bad = []
    for name in saved.base:
        chain = [e for e in loaded if name in e.before]  # the saved edits loaded on this weight, in order
        below = [chain[0].before[name], *(e.after[name] for e in chain)] if chain else []
        stacked = bool(chain) and before[name] == below[-1] and saved.base[name] in below
        if not (on_base[name] or stacked):
            bad.append(name)
    if bad:
        if manifest["model_fingerprint"] != lm.fingerprint:
            raise UserError(f"{_made_for(dir_, manifest, lm)}: its weights {bad[:3]} are not the saved originals "
                            f"cast to {dtype_name(params[bad[0]].dtype)}")
        hint = (f"it was saved on top of edits that are not loaded ({', '.join(absent)}): load them first"
                if absent else "the model carries a change made in memory (load saved edits first, "
                "then apply unsaved ones), or its weights are not those the edit was saved from")
        raise UserError(f"cannot load {dir_}: the model's {bad[:3]} hold neither the weights the edit was made on "
                        f"nor those plus edits loaded with load_edit; {hint}")
    adaptors = _saved_adaptors(dir_, lm, manifest)
    if absent:  # they change other weights than this edit's: it loads, but was computed with them in place
        log.warning("%s was saved on a model carrying the edits %s, which are not loaded; it was computed "
                    "with them in place", dir_, ", ".join(absent))

    backup = LoadedEdit({n: params[n].detach().clone() for n in saved.base}, lm.model,
                        edit_id=ident, source=str(dir_), before=before)
    with torch.no_grad():
        for name in saved.base:
            if saved.edited is not None and on_base[name]:
                params[name].copy_(saved.edited[name])
            else:
                add_to_weight(params[name], saved.delta[name])
    modules = dict(lm.model.named_modules())
    for name, adaptor in adaptors:
        install(modules[name], adaptor.to(lm.device))
        backup.adaptors.append((name, adaptor))
    backup.after = {n: checksum(params[n]) for n in saved.base}
    damaged = [n for n in saved.base if on_base[n] and n in saved.loaded and backup.after[n] != saved.loaded[n]]
    if damaged:
        Backup(backup.originals, lm.model, backup.adaptors).restore()
        raise UserError(f"{dir_} is damaged: loading it does not give the weights it recorded for {damaged[:3]}")
    setattr(lm.model, LOADED, [*loaded, backup])
    return backup


def load_edits(dirs: list[Path], lm: LanguageModel) -> LoadedEdits:
    """Load several saved edits in order (each on top of the ones before); one backup undoes them all.

    If one cannot be loaded, those loaded before it are undone and the error is raised."""
    parts: list[LoadedEdit] = []
    try:
        for dir_ in dirs:
            parts.append(load_edit(dir_, lm))
    except BaseException:
        for part in reversed(parts):
            part.restore()
        raise
    originals: dict[str, torch.Tensor] = {}
    for part in parts:
        for name, value in part.originals.items():
            originals.setdefault(name, value)
    return LoadedEdits(originals, lm.model, [a for p in parts for a in p.adaptors], parts=parts)


@torch.no_grad()
def undo_saved(dir_: Path, lm: LanguageModel) -> None:
    """Undo a saved edit exactly: the one loaded into ``lm`` by ``load_edit`` (through its backup);
    else, for folders of formats 1–3, by copying their original weights back and removing the
    adaptors they install (matched by tag). A format-4 folder that was not loaded into ``lm`` is
    refused: it holds no original weights."""
    dir_ = Path(dir_)
    manifest = read_manifest(dir_)
    ident = edit_id(dir_, manifest)
    entry = next((e for e in getattr(lm.model, LOADED, []) if e.edit_id == ident), None)
    if entry is not None:
        entry.restore()
        return
    if manifest["model_fingerprint"] != lm.fingerprint:
        raise UserError(_made_for(dir_, manifest, lm))
    if manifest.get("format", 1) >= 4:
        raise UserError(f"cannot undo {dir_} from the folder: it was not loaded into this model by load_edit, and it "
                        "holds the delta only, not the original weights (subtracting it would not give them back bit "
                        "for bit); undo with the backup that load_edit returned, or reload the model")
    saved = _read(dir_, manifest, lm)
    params = dict(lm.model.named_parameters())
    for name, value in saved.original.items():
        params[name].copy_(value)
    modules = dict(lm.model.named_modules())
    for entry in manifest.get("adaptors") or []:
        module = modules.get(entry.get("module"))
        for adaptor in AdaptorStack.installed(module) if module is not None else []:
            if adaptor.tag() == entry.get("tag"):
                uninstall(module, adaptor)
