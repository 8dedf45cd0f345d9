"""A saved edit re-applies to a fresh copy of the model and undoes bit-exactly; other models refuse it."""

import pytest
import torch

from robustedit.editors.base import build_editor
from robustedit.editors.store import load_edit, save_edit, undo_saved
from robustedit.errors import UserError
from robustedit.request import EditRequest

from tiny import same_state, state_copy, tiny_model

SETTINGS = {"layer": 1, "stats": {"n_tokens": 2048, "seq_len": 64, "batch_size": 8},
            "context_template_length_params": [[3, 5]], "v_num_grad_steps": 5}
REQUEST = EditRequest("The mother tongue of {}", "Danielle Darrieux", "English", "French")


def test_save_load_undo_round_trip(tokenizer, tmp_path):
    lm = tiny_model("llama", tokenizer)
    delta = build_editor("rome", lm, SETTINGS).edit([REQUEST])
    save_edit(tmp_path / "edit", lm, delta, [REQUEST], SETTINGS)

    fresh = tiny_model("llama", tokenizer)  # a new copy of the same weights
    original = state_copy(fresh)
    load_edit(tmp_path / "edit", fresh)
    name = next(iter(delta.weights))
    param = dict(fresh.model.named_parameters())[name]
    assert torch.equal(param, original[name] + delta.weights[name])
    undo_saved(tmp_path / "edit", fresh)
    assert same_state(fresh, original) == []


def test_saved_edit_refuses_another_model(tokenizer, tmp_path):
    lm = tiny_model("llama", tokenizer)
    delta = build_editor("rome", lm, SETTINGS).edit([REQUEST])
    save_edit(tmp_path / "edit", lm, delta, [REQUEST], SETTINGS)
    other = tiny_model("llama", tokenizer, seed=1)
    with pytest.raises(UserError, match="was made for model"):
        load_edit(tmp_path / "edit", other)


def test_save_refuses_existing_folder_and_load_refuses_garbage(tokenizer, tmp_path):
    lm = tiny_model("llama", tokenizer)
    delta = build_editor("rome", lm, SETTINGS).edit([REQUEST])
    (tmp_path / "taken").mkdir()
    with pytest.raises(UserError, match="already exists"):
        save_edit(tmp_path / "taken", lm, delta, [REQUEST], SETTINGS)
    with pytest.raises(UserError, match="not a saved robustedit edit"):
        load_edit(tmp_path / "taken", lm)
