"""Editors compute deltas; importing this package registers them all."""

from robustedit.editors import memit, rome  # noqa: F401  (register "memit", "rome")
from robustedit.editors.base import EDITORS, Delta, Editor, applied, apply_delta, build_editor

__all__ = ["EDITORS", "Delta", "Editor", "applied", "apply_delta", "build_editor"]
