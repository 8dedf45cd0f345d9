"""What a command needs before it runs: the model, the editor and its resolved configuration.

Configuration layers, later wins: the editor's dataclass defaults → the shipped file
``resources/configs/<editor>/<model>.yaml`` (if any) → ``--config FILE`` → ``--set key=value``.
``--config`` also takes the name of a bundled preset (``resources/configs/presets/<name>.yaml``,
e.g. ``rep-paper``: REP with the paper's exact settings), which overrides the shipped file.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

from robustedit.config import from_dict, merge, parse_overrides, read_yaml
from robustedit.errors import UserError
from robustedit.paths import resource

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def shipped_config(editor: str, model: str) -> dict:
    """The shipped settings of ``editor`` for ``model``; an add-on editor ("rome+rep") starts from
    its base editor's file, so the base's measured layers and λ carry over."""
    settings = shipped_config(editor.split("+", 1)[0], model) if "+" in editor else {}
    path = resource("configs", editor, f"{Path(model).name}.yaml")
    return merge(settings, read_yaml(path)) if path.is_file() else settings


def preset_names() -> list[str]:
    """The bundled presets ``--config`` accepts by name."""
    return sorted(p.stem for p in resource("configs", "presets").glob("*.yaml"))


def config_path(config_file: str) -> Path:
    """A ``--config`` value as a file: the file itself, or a bundled preset of that name."""
    path = Path(config_file).expanduser()
    if path.is_file() or Path(config_file).suffix in (".yaml", ".yml") or "/" in config_file:
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        return path
    if config_file in preset_names():
        return resource("configs", "presets", f"{config_file}.yaml")
    raise UserError(f"--config {config_file!r} is neither a YAML file nor a bundled preset "
                    f"({', '.join(preset_names())})")


def editor_settings(editor: str, model: str, config_file: str | None, sets: list[str]) -> dict:
    """The override mapping for ``editor`` (validated against its config class by the caller)."""
    settings = shipped_config(editor, model)
    if config_file:
        settings = merge(settings, read_yaml(config_path(config_file)))
    return merge(settings, parse_overrides(sets))


def resolve_editor(editor: str, model: str, config_file: str | None = None, sets: list[str] | None = None):
    """The editor class and its validated config, before any model is loaded (mistakes fail fast)."""
    from robustedit.editors import EDITORS

    if "+" in editor and editor not in EDITORS.names():
        base, addon = editor.split("+", 1)
        EDITORS.get(base)
        raise UserError(f"add-on {addon!r} of {editor!r} is not available yet; editors: {', '.join(EDITORS.names())}")
    cls = EDITORS.get(editor)
    return cls, from_dict(cls.config_cls, editor_settings(editor, model, config_file, sets or []))


def make_editor(editor: str, lm, config_file: str | None = None, sets: list[str] | None = None):
    """Build a registered editor on ``lm``; returns (editor, resolved config as a dict)."""
    cls, config = resolve_editor(editor, lm.name, config_file, sets)
    return cls(lm, config), dataclasses.asdict(config)


@dataclasses.dataclass(frozen=True)
class EditorSpec:
    """Everything needed to rebuild the same editor on the same model in another process
    (an evaluation worker): names and options only, no tensors."""

    editor: str
    model: str = "smollm2"
    config_file: str | None = None
    sets: tuple[str, ...] = ()
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0

    def build(self):
        """Load the model and build the editor; returns (editor, resolved config as a dict)."""
        from robustedit.models.load import load_model

        cls, config = resolve_editor(self.editor, self.model, self.config_file, list(self.sets))
        seed_everything(self.seed)
        lm = load_model(self.model, dtype=self.dtype, device=self.device)
        return cls(lm, config), dataclasses.asdict(config)
