"""Editors compute deltas; importing this package registers them all."""

from robustedit.editors import rome  # noqa: F401  (registers "rome")
from robustedit.editors.base import EDITORS, Delta, Editor, applied, apply_delta, build_editor

__all__ = ["EDITORS", "Delta", "Editor", "applied", "apply_delta", "build_editor"]
