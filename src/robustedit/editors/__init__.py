"""Editors compute deltas; importing this package registers them all."""

from robustedit.editors import ft_l, memit, mend, rep, rome, serac  # noqa: F401  (registers every editor)
from robustedit.editors.base import (
           EDITORS,
           Delta,
           Editor,
           applied,
           apply_delta,
)
from robustedit.editors.settings import build_editor, get_editor, resolve_editor
from robustedit.editors.saved import load_edit, load_edits, undo_saved
from robustedit.editors.store import EditSequence, save_edit

__all__ = ["EDITORS", "Delta", "EditSequence", "Editor", "applied", "apply_delta", "build_editor", "get_editor",
           "load_edit", "load_edits", "resolve_editor", "save_edit", "undo_saved"]
