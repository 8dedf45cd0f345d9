"""Exporting a model with saved edits in its weights (``robustedit export --edit DIR... --out HFDIR``).

:func:`export_edits` loads the saved edit folders in order (``editors.saved.load_edits``: deltas
add), writes the model with ``save_pretrained`` and its tokenizer beside it, so that
``AutoModelForCausalLM.from_pretrained(HFDIR)`` loads the edited model with no robustedit
installed, and restores the in-memory model bit-exactly. Tied weights (an LM head tied to the
embeddings) are written once and tied again on load, as ``save_pretrained`` always does.

``HFDIR/robustedit_export.json`` records what went in: robustedit version, the model and its
fingerprint, saved edits the model carried already (``loaded_before``), and per edit its folder,
id, editor, config, model fingerprint, requests and case ids.

Only edits that live in the weights can be exported. An edit folder that installs key adaptors
(REP: ``rome+rep``, ``memit+rep``) is refused, and so is a model that carries adaptors or an edit
memory (SERAC) in memory: ``save_pretrained`` would silently drop them. SERAC's edits cannot be
saved to a folder in the first place (``editors.saved.MEMORY_NOT_SAVED``). Everything is checked
before anything is written; the folder is staged beside ``out`` and moved into place in one rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from robustedit import __version__
from robustedit.editors.adaptors import AdaptorStack
from robustedit.editors.memory import EditMemory
from robustedit.editors.saved import (
    MEMORY_NOT_SAVED,
    edit_id,
    load_edits,
    loaded_edits,
    read_manifest,
)
from robustedit.errors import UserError
from robustedit.models.load import LanguageModel

RECORD = "robustedit_export.json"
ADAPTORS_NOT_EXPORTED = ("its edit lives in key adaptors outside the weights (REP); "
                         "it cannot be exported as plain weights")


def outside_the_weights(lm: LanguageModel) -> list[str]:
    """What ``lm`` carries outside its parameters that ``save_pretrained`` would not write."""
    found = [f"key adaptors on {name}" for name, module in lm.model.named_modules() if AdaptorStack.installed(module)]
    if EditMemory.installed(lm.model):
        found.append("an edit memory (SERAC)")
    return found


def _describe(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    steps = manifest.get("steps") or [{"case_ids": None, "requests": manifest.get("requests", [])}]  # format 1
    return {"folder": str(folder), "edit_id": edit_id(folder, manifest), "format": manifest.get("format", 1),
            "editor": manifest.get("editor"), "config": manifest.get("config"), "model": manifest.get("model"),
            "model_fingerprint": manifest.get("model_fingerprint"),
            "requests": [r for s in steps for r in s.get("requests", [])],
            "case_ids": [c for s in steps for c in (s.get("case_ids") or [])]}


def export_edits(lm: LanguageModel, edit_dirs: list[Path], out: Path) -> Path:
    """Write ``lm`` with ``edit_dirs`` applied in order as a Hugging Face folder ``out`` (which must
    not exist); ``lm`` is left exactly as it was. Returns ``out``."""
    out = Path(out)
    folders = [Path(d) for d in edit_dirs]
    if out.exists():
        raise UserError(f"{out} already exists; choose a new folder to export to")
    if not folders:
        raise UserError("nothing to export: name at least one saved edit folder (--edit DIR)")
    if outside := outside_the_weights(lm):
        raise UserError(f"cannot export: the model carries {', '.join(outside)}, edits outside the weights that "
                        "cannot be exported as plain weights")
    edits = []
    for folder in folders:
        manifest = read_manifest(folder)
        if manifest.get("adaptors"):
            raise UserError(f"cannot export {folder}: {ADAPTORS_NOT_EXPORTED}")
        if manifest.get("memory"):  # not written by this version (store refuses); said plainly if met
            raise UserError(f"cannot export {folder}: {MEMORY_NOT_SAVED}")
        edits.append(_describe(folder, manifest))
    record = {"robustedit": __version__, "model": lm.name, "model_fingerprint": lm.fingerprint,
              "dtype": str(lm.dtype).removeprefix("torch."),
              # saved edits the model carried already (loaded by the caller): in the weights too
              "loaded_before": [{"edit_id": e.edit_id, "folder": e.source} for e in loaded_edits(lm.model)],
              "edits": edits}

    backup = load_edits(folders, lm)  # refuses (model unchanged) edits made for another model
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
            stage = Path(tmp) / "model"
            lm.model.save_pretrained(stage)
            lm.tokenizer.save_pretrained(stage)
            (stage / RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
            if out.exists():
                raise UserError(f"{out} already exists; choose a new folder to export to")
            os.replace(stage, out)
    finally:
        backup.restore()
    return out
