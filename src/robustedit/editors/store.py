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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from robustedit import __version__
from robustedit.editors.adaptors import KeyAdaptor
from robustedit.editors.base import (
    Backup,
    Delta,
    add_to_weight,
    apply_delta,
    check_finite,
)
from robustedit.editors.memory import MemoryEdit
from robustedit.errors import UserError
from robustedit.models.load import LanguageModel
from robustedit.request import EditRequest

from robustedit.editors.saved import (
    CHECKED_DTYPES,
    FORMAT,
    MEMORY_NOT_SAVED,
    checksum,
    dtype_name,
    loaded_edits,
)

log = logging.getLogger(__name__)


def _step(delta: Delta, requests: list[EditRequest], case_ids: list[str] | None) -> dict[str, Any]:
    if case_ids is not None and len(case_ids) != len(requests):
        raise ValueError(f"{len(case_ids)} case ids for {len(requests)} requests")
    return {"case_ids": None if case_ids is None else list(case_ids),
            "requests": [{k: v for k, v in asdict(r).items() if k != "in_domain"} for r in requests],
            "info": dict(delta.info)}


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
