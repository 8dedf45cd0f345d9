"""The one way to build an editor: :func:`get_editor`, with the same settings the CLI uses.

Configuration layers, later wins: the editor's dataclass defaults → the shipped file
``resources/configs/<editor>/<model>.yaml`` (if any; an add-on such as ``rome+rep`` first takes
its base editor's file, so the base's measured layers and λ carry over) → ``config`` (a YAML file,
or the name of a bundled preset ``resources/configs/presets/<name>.yaml``, e.g. ``rep-paper``) →
``sets`` (``["key=value", ...]``, the CLI's ``--set``; an EasyEdit hparams file is translated,
``editors/easyedit.py``) → keyword ``overrides`` (Python values,
nested dicts for nested configs).

:func:`resolve_editor` does all of it without a model, so a command can refuse a bad setting
before the (slow) model load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from robustedit.config import from_dict, merge, parse_overrides, read_yaml
from robustedit.editors.base import EDITORS, Editor
from robustedit.editors.easyedit import from_easyedit, is_easyedit
from robustedit.errors import UserError
from robustedit.paths import resource


def shipped_config(editor: str, model: str) -> dict:
    """The shipped settings of ``editor`` for ``model`` (its base editor's first, for an add-on)."""
    cls = EDITORS.get(editor) if editor in EDITORS else None
    settings = shipped_config(cls.extends, model) if cls is not None and cls.extends else {}
    path = resource("configs", editor, f"{Path(model).name}.yaml")
    return merge(settings, read_yaml(path)) if path.is_file() else settings


def preset_names() -> list[str]:
    """The bundled presets ``config`` accepts by name."""
    return sorted(p.stem for p in resource("configs", "presets").glob("*.yaml"))


def config_path(config_file: str) -> Path:
    """A ``config`` value as a file: the file itself, or a bundled preset of that name."""
    path = Path(config_file).expanduser()
    if path.is_file() or Path(config_file).suffix in (".yaml", ".yml") or "/" in config_file:
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        return path
    if config_file in preset_names():
        return resource("configs", "presets", f"{config_file}.yaml")
    raise UserError(f"--config {config_file!r} is neither a YAML file nor a bundled preset "
                    f"({', '.join(preset_names())})")


def editor_settings(editor: str, model: str, config: str | None = None, sets: Iterable[str] = (),
                    overrides: dict[str, Any] | None = None) -> dict:
    """The merged override mapping for ``editor`` on ``model`` (validated by :func:`resolve_editor`)."""
    settings = shipped_config(editor, model)
    if config:
        path = config_path(config)
        given = read_yaml(path)
        if is_easyedit(given):  # an EasyEdit hparams file: its keys translated, or refused with a list
            cls = EDITORS.get(editor) if editor in EDITORS else None
            given = from_easyedit(given, editor, cls.extends if cls else None, str(path))
        settings = merge(settings, given)
    return merge(merge(settings, parse_overrides(list(sets))), overrides or {})


def resolve_editor(editor: str, model: str, config: str | None = None, sets: Iterable[str] = (),
                   overrides: dict[str, Any] | None = None) -> tuple[type[Editor], Any]:
    """The editor class and its validated config, before any model is loaded (mistakes fail fast)."""
    if "+" in editor and editor not in EDITORS:
        base, addon = editor.split("+", 1)
        EDITORS.get(base)
        raise UserError(f"add-on {addon!r} of {editor!r} is not available yet; editors: {', '.join(EDITORS.names())}")
    cls = EDITORS.get(editor)
    return cls, from_dict(cls.config_cls, editor_settings(editor, model, config, sets, overrides))


def get_editor(name: str, lm, *, config: str | None = None, sets: Iterable[str] = (), **overrides: Any) -> Editor:
    """The registered editor ``name`` on ``lm`` with the CLI's settings for ``lm``.

    >>> editor = get_editor("memit", lm)                          # shipped SmolLM2 layers and λ
    >>> editor = get_editor("rome", lm, layer=3)                   # one setting changed
    >>> editor = get_editor("rome+rep", lm, config="rep-paper", sets=["rep.tau=0.8"])
    """
    cls, resolved = resolve_editor(name, lm.name, config, sets, overrides)
    return cls(lm, resolved)


def build_editor(name: str, lm, overrides: dict[str, Any] | None = None) -> Editor:
    """Deprecated spelling of :func:`get_editor` (kept for scripts written against 0.1.0; it now
    applies the shipped settings for ``lm`` too, as the CLI always did)."""
    return get_editor(name, lm, **(overrides or {}))
