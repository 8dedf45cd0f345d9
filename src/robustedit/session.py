"""What a command needs before it runs: a seeded, loaded model and its editor.

``setup`` is the model setup every command and experiment shares (seeds, dtype, device); the
editor comes from :func:`robustedit.editors.settings.get_editor`, the one constructor.
:class:`EditorSpec` carries both to another process (an evaluation worker).
"""

from __future__ import annotations

import dataclasses
import random

from robustedit.editors.settings import get_editor, resolve_editor


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(model: str = "smollm2", dtype: str = "float32", device: str = "cpu", seed: int = 0):
    """Seed every generator, then load ``model`` (embedded name, local folder or hub id)."""
    from robustedit.models.load import load_model

    seed_everything(seed)
    return load_model(model, dtype=dtype, device=device)


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

    def check(self):
        """The editor class and its validated config, without loading the model."""
        return resolve_editor(self.editor, self.model, self.config_file, self.sets)

    def build(self):
        """Load the model and build the editor; returns (editor, resolved config as a dict)."""
        self.check()  # a bad setting fails before the model loads
        lm = setup(self.model, self.dtype, self.device, self.seed)
        editor = get_editor(self.editor, lm, config=self.config_file, sets=self.sets)
        return editor, editor.settings()
