"""Saving edits to disk, re-applying them to a fresh model (several, stacked), and undoing them exactly.

A saved edit is a folder (a single edit is a sequence of one step). Format 4, written since issue 20:

* ``delta.safetensors``: one tensor per touched parameter, the change to add, stored once:

  - a single edit (:func:`save_edit`): the editor's delta as it is, so that loading adds it exactly
    as :func:`~robustedit.editors.base.apply_delta` did (``add_to_weight``);
  - a sequence (:meth:`EditSequence.save`, many steps summed): ``edited - original`` computed in
    float64, stored in the narrowest of (the parameter's dtype, float32, float64) for which adding
    it to the original (``add_to_weight``: in the wider dtype, rounded once) gives back the weights
    edited step by step bit for bit; checked at save. The float64 difference of two float32
    numbers is exact when it needs at most 53 significant bits; where it does not, the sum still
    rounds back to the edited value if the weight grew, and misses it only if the weight shrank
    until the edited value's lowest bit lies more than ~53 places below the original's highest
    bit: then no additive float64 delta gives it back. A step (a float32 sum) leaves a weight no
    finer than about half the spacing of the value it was added to, so that takes three or more
    near-exact cancellations of one weight (the test takes a weight of 0.07 to ~2⁻⁶⁰ in three
    steps). Such elements are counted in the manifest (``inexact``; loading gives them within
    ~2⁻⁵³ of the original's size) and logged at save. In practice float32 sequences of ROME
    store float64 (in a random 10-step test 1.7 % of the elements of a float32-rounded difference
    did not round trip; a 3-step MEMIT sequence on a tiny model did, and is stored as float32),
    and bfloat16 / float16 sequences store float32.

* ``manifest.json``: ``format`` 4, robustedit version, model name and fingerprint, editor, config,
  one entry per step (``case_ids``, ``requests``, the delta's ``info``), an ``edit_id`` (hash of
  the edit's content), ``on_top_of`` (edits loaded into the model it was saved from: id and
  folder), and per touched parameter (``tensors``): ``shape``, ``dtype`` (the parameter's),
  ``delta_dtype``, ``original_sha256`` (SHA-256 of the values the edit was made on, cast to
  float32, bfloat16 and float16: only touched matrices are hashed, ~0.3 s per 180 MB matrix),
  ``loaded_sha256`` (of the values loading gives on those) and ``inexact``.
* ``adaptors.safetensors`` (only if some step installed key adaptors, e.g. REP): their parameters,
  ``<i>.<parameter>`` for the i-th entry of the manifest's ``adaptors`` list (module, tag, config).

Loading (:func:`load_edit`) adds the delta to whatever the model holds and returns a backup whose
``restore()`` copies back the values from before *this* load (bit-exact); :func:`load_edits` loads
several in order under one backup. Each touched parameter must hold, bit for bit (by checksum),
either the values the edit was made on or those values plus edits loaded earlier with
``load_edit`` (recorded on the model: stacking on saved edits is allowed, deltas add, REP
adaptors stack); anything else (an edit applied in memory under it, other weights) is refused
with the reason. The model fingerprint must match, except that a model of another dtype (the same
model loaded in bfloat16, say) is accepted when its touched parameters equal the saved originals
cast to its dtype: the delta is then added in float32 and rounded (``add_to_weight``), the nearest
representable weights, not those an edit of the bfloat16 model would give. Loading the same edit
twice is refused; loaded edits must be restored in reverse order where they share parameters.

``undo_saved(DIR, lm)`` restores an edit loaded into ``lm`` in this process (through the backup
``load_edit`` keeps on the model). A format-4 folder holds no original weights, so an edit that was
not loaded that way cannot be undone from it exactly: that is refused (subtracting the delta would
not give the original bits back); reload the model instead.

Earlier formats still load: 1 (one edit: ``delta`` + ``original``), 2 (steps, ``original`` +
``edited`` + ``delta``), 3 (2 + key adaptors). On the weights they were made on they load as
before (format 1 adds its delta, 2–3 copy ``edited`` in); on top of other loaded edits they add
``edited - original`` in float64; ``undo_saved`` copies their originals back. Only the same dtype.

SERAC's edits live in an edit memory, outside the weights: they cannot be saved (nor exported).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robustedit import __version__
from robustedit.editors.adaptors import AdaptorStack, KeyAdaptor, install, uninstall
from robustedit.editors.base import (
    Backup,
    Delta,
    add_to_weight,
    apply_delta,
    check_finite,
    non_finite,
)
from robustedit.editors.memory import MemoryEdit
from robustedit.errors import UserError
from robustedit.models.load import LanguageModel
from robustedit.request import EditRequest

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


def _step(delta: Delta, requests: list[EditRequest], case_ids: list[str] | None) -> dict[str, Any]:
    if case_ids is not None and len(case_ids) != len(requests):
        raise ValueError(f"{len(case_ids)} case ids for {len(requests)} requests")
    return {"case_ids": None if case_ids is None else list(case_ids),
            "requests": [{k: v for k, v in asdict(r).items() if k != "in_domain"} for r in requests],
            "info": dict(delta.info)}


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


# --- saving ---------------------------------------------------------------------------------------

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
        _refuse_existing(Path(out_dir))
        params = dict(self.lm.model.named_parameters())
        original = _cpu(self.originals)
        edited = _cpu({n: params[n] for n in self.originals})
        deltas, inexact = {}, {}
        for name, before in original.items():
            deltas[name], inexact[name] = _exact_difference(before, edited[name])
        bad = {n: k for n, k in inexact.items() if k}
        if bad:
            log.warning("%s: %d weights of %s cannot be stored exactly as a delta (repeated near-cancellations "
                        "left them with bits below float64's reach from the original value); loading gives them "
                        "within ~2^-53 of the original value (module docstring)",
                        out_dir, sum(bad.values()), ", ".join(bad))
        return _write(Path(out_dir), self.lm, original, deltas, inexact, self.steps, editor_name, config,
                      self.adaptors)


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
    _refuse_existing(Path(out_dir))
    original = _cpu({n: params[n] for n in delta.weights})
    return _write(Path(out_dir), lm, original, _cpu(delta.weights), {n: 0 for n in delta.weights},
                  [_step(delta, requests, case_ids)], delta.info.get("editor"), config, list(delta.adaptors.items()))


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _added(original: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """What loading ``delta`` onto ``original`` gives (the model is not involved)."""
    out = original.clone()
    add_to_weight(out, delta)
    return out


def _exact_difference(original: torch.Tensor, edited: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``edited - original`` in the narrowest dtype that loads back to ``edited`` bit for bit, and
    the number of elements no dtype gets back (float64 is then stored; module docstring)."""
    exact = edited.double() - original.double()
    for dtype in sorted(dict.fromkeys((original.dtype, torch.float32, torch.float64)), key=lambda t: t.itemsize):
        candidate = exact.to(dtype)
        if torch.equal(_added(original, candidate), edited):
            return candidate, 0
    return exact, int((_added(original, exact) != edited).sum())


def _refuse_existing(out_dir: Path) -> None:
    if out_dir.exists():
        raise UserError(f"{out_dir} already exists; choose another folder to save the edit in")


def _edit_id(tensors: dict[str, dict[str, Any]], adaptors: list[tuple[str, KeyAdaptor]]) -> str:
    """A hash of what the edit does: the values it was made on and gives, per parameter, and its adaptors."""
    content = {"tensors": {n: [t["original_sha256"][t["dtype"]], t["loaded_sha256"]] for n, t in tensors.items()},
               "adaptors": [[name, a.tag()] for name, a in adaptors]}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:32]


def _write(out_dir: Path, lm: LanguageModel, original: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor],
           inexact: dict[str, int], steps: list[dict[str, Any]], editor_name: str | None, config: dict,
           adaptors: list[tuple[str, KeyAdaptor]] = ()) -> Path:
    """Stage the folder next to ``out_dir`` and move it into place in one rename."""
    _refuse_existing(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, before in original.items():
        d = deltas[name]
        tensors[name] = {
            "shape": list(before.shape),
            "dtype": dtype_name(before.dtype),
            "delta_dtype": dtype_name(d.dtype),
            "original_sha256": {dtype_name(t): checksum(before.to(t))
                                for t in dict.fromkeys((before.dtype, *CHECKED_DTYPES))},
            "loaded_sha256": checksum(_added(before, d)),
            "inexact": inexact[name],
        }
    manifest = {
        "robustedit": __version__,
        "format": FORMAT,
        "model": lm.name,
        "model_fingerprint": lm.fingerprint,
        "editor": editor_name,
        "config": config,
        "edit_id": _edit_id(tensors, list(adaptors)),
        "on_top_of": [{"edit_id": e.edit_id, "source": e.source} for e in loaded_edits(lm.model)],
        "n_steps": len(steps),
        "steps": steps,
        "tensors": tensors,
    }
    if adaptors:
        manifest["adaptors"] = [{"module": name, "tag": a.tag(), "config": a.config()} for name, a in adaptors]
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        stage = Path(tmp) / "edit"
        stage.mkdir()
        save_file(deltas, str(stage / "delta.safetensors"))
        if adaptors:
            save_file({f"{i}.{k}": v.detach().cpu().contiguous() for i, (_, a) in enumerate(adaptors)
                       for k, v in a.state_dict().items()}, str(stage / "adaptors.safetensors"))
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        _refuse_existing(out_dir)  # os.replace would quietly take the place of an empty folder
        os.replace(stage, out_dir)
    return out_dir


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
