"""MEND (editors/mend.py, training/mend.py) and the shared training loop on tiny random models:
training a few steps makes the hypernetwork's edit take, resuming equals not stopping, the trained
editor is refused for another model, and an untrained editor is a one-line error."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import same_state, state_copy, tiny_model

import robustedit.editors  # noqa: F401  (registers the editors)
from robustedit.config import from_dict
from robustedit.editors import applied, get_editor
from robustedit.editors.mend import MENDConfig, MENDSSSConfig
from robustedit.editors.sss import per_example_nll, teacher_forced
from robustedit.errors import UserError
from robustedit.request import EditRequest
from robustedit.training.loop import LOG, batch_indices, split_cases
from robustedit.training.trainers import train_editor

SUBJECTS = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Delhi", "Tokyo", "Quito", "Accra", "Hanoi", "Dakar", "Sofia"]
OBJECTS = ["red", "blue", "green", "black", "white", "gold"]


def mend_file(tmp_path, n: int = 12):
    records = [{"subject": s, "src": f"What colour is {s}?", "rephrase": f"Which colour does {s} have?",
                "alt": OBJECTS[i % len(OBJECTS)], "answers": ["grey"], "pred": "grey",
                "loc": f"nq question: who wrote book number {i}", "loc_ans": "Someone Else"}
               for i, s in enumerate(SUBJECTS[:n])]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    return str(path)


def config(data: str, cls=MENDConfig, matrices: str = "down", **train) -> MENDConfig:
    settings = {"steps": 4, "batch_size": 2, "lr": 1e-3, "lr_lr": 1e-3, "val_every": 0, "save_every": 2,
                "val_cases": 2, "val_fraction": 0.2, "dataset": data, **train}
    return from_dict(cls, {"rank": 8, "init_lr": 1e-2, "matrices": matrices, "train": settings})


def target_nll(lm, request: EditRequest) -> float:
    tf = teacher_forced(lm, [request.text], [request.target_new])
    with torch.no_grad():
        return float(per_example_nll(lm.model(input_ids=tf.batch.input_ids).logits, tf)[0])


def test_batches_are_a_function_of_the_step_and_cover_each_epoch():
    first = [i for s in range(5) for i in batch_indices(10, 2, s, seed=3)]
    assert sorted(first) == list(range(10))
    assert batch_indices(10, 2, 7, seed=3) == batch_indices(10, 2, 7, seed=3)
    train, val = split_cases(list(range(20)), 0.1)
    assert val == [18, 19] and train == list(range(18))


def test_an_untrained_editor_is_a_one_line_error_naming_the_train_command(tokenizer, tmp_path):
    lm = tiny_model("llama", tokenizer)
    with pytest.raises(UserError, match="train it first with `robustedit train mend"):
        get_editor("mend", lm)
    with pytest.raises(UserError, match="no trained mend editor in"):
        get_editor("mend", lm, **{"checkpoint": str(tmp_path / "nowhere")})


@pytest.mark.parametrize("arch, matrices", [("llama", "down"), ("gpt2", "down"), ("llama", "mlp"), ("gpt2", "mlp")])
def test_training_makes_the_edit_take_and_editing_leaves_the_model_unchanged(tokenizer, tmp_path, arch, matrices):
    lm = tiny_model(arch, tokenizer)
    data = mend_file(tmp_path)
    out, meta = train_editor("mend", lm, config(data, matrices=matrices, steps=30, val_every=15), tmp_path / "mend")
    per_layer = 1 + (len(lm.spec.mlp_in) if matrices == "mlp" else 0)  # the reference's: every MLP matrix
    assert len(meta["weights"]) == 3 * per_layer
    assert (out / "editor.safetensors").is_file() and meta["steps"] == 30
    log = [json.loads(line) for line in (out / LOG).read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "val"] == [15, 30]

    before = state_copy(lm)
    editor = get_editor("mend", lm, **{"checkpoint": str(out)})
    request = EditRequest("What colour is {}?", "Lima", "gold")  # a training edit: the net must have learnt it
    delta = editor.edit([request])
    assert not same_state(lm, before), "edit() must leave the model as it found it"
    assert set(delta.weights) == set(meta["weights"]) and editor.trained_with["matrices"] == matrices
    nll0 = target_nll(lm, request)
    with applied(lm, delta):
        nll1 = target_nll(lm, request)
    assert nll1 < nll0 - 0.5


def test_resuming_gives_the_same_network_as_not_stopping(tokenizer, tmp_path):
    lm = tiny_model("llama", tokenizer)
    data = mend_file(tmp_path)
    torch.manual_seed(0)
    whole, _ = train_editor("mend", lm, config(data, steps=4, log_every=1), tmp_path / "whole")
    half = tmp_path / "half"
    torch.manual_seed(0)
    train_editor("mend", lm, config(data, steps=2, log_every=1), half)
    (half / "editor.safetensors").unlink()
    with pytest.raises(UserError, match="another configuration"):
        train_editor("mend", lm, config(data, steps=4, lr=5e-4), half, resume=True)
    train_editor("mend", lm, config(data, steps=4, log_every=1), half, resume=True)
    from safetensors.torch import load_file

    a, b = load_file(str(whole / "editor.safetensors")), load_file(str(half / "editor.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(line) for line in (half / LOG).read_text().splitlines()]
    train_steps = [r["step"] for r in lines if r["kind"] == "train"]
    assert train_steps == [1, 2, 3, 4]  # the resumed part's lines follow, none repeated
    with pytest.raises(UserError, match="already holds a training run"):
        train_editor("mend", lm, config(data, steps=4, log_every=1), half)


def test_a_trained_editor_is_refused_for_another_model(tokenizer, tmp_path):
    lm = tiny_model("llama", tokenizer)
    out, _ = train_editor("mend", lm, config(mend_file(tmp_path), steps=1), tmp_path / "m")
    other = tiny_model("llama", tokenizer, seed=1)
    with pytest.raises(UserError, match="trained for another model"):
        get_editor("mend", other, **{"checkpoint": str(out)})


def test_mend_with_sss_trains_with_the_regularizer_in_its_loss(tokenizer, tmp_path):
    lm = tiny_model("llama", tokenizer)
    out, meta = train_editor("mend+sss", lm, config(mend_file(tmp_path), MENDSSSConfig, steps=2, log_every=1),
                             tmp_path / "sss")
    log = [json.loads(line) for line in (out / LOG).read_text().splitlines() if '"train"' in line]
    assert all(r["sss"] > 0 for r in log)
    assert meta["config"]["sss"]["coefficient"] == 0.9
    assert get_editor("mend+sss", lm, **{"checkpoint": str(out)}).edit(
        [EditRequest("What colour is {}?", "Oslo", "red")]).weights


def test_each_training_seed_has_its_own_default_folder_and_settings_must_name_it(tokenizer, tmp_path, monkeypatch):
    from robustedit.cli.running import with_training_seed
    from robustedit.editors.trained import default_dir

    monkeypatch.setenv("ROBUSTEDIT_CACHE", str(tmp_path / "cache"))
    lm = tiny_model("llama", tokenizer)
    data = mend_file(tmp_path)
    seed1 = with_training_seed(config(data, steps=1), 1)  # what `robustedit train mend --seed 1` trains with
    out, meta = train_editor("mend", lm, seed1, None)
    assert out == default_dir("mend", lm, 1) != default_dir("mend", lm) and meta["config"]["train"]["seed"] == 1
    with pytest.raises(UserError, match="no trained mend editor for"):
        get_editor("mend", lm)  # seed 0's folder is still empty
    assert get_editor("mend", lm, sets=["train.seed=1"]).edit([EditRequest("What colour is {}?", "Oslo", "red")]).weights
    with pytest.raises(UserError, match="trained with train.seed=1, not 0"):
        get_editor("mend", lm, **{"checkpoint": str(out)})
    with pytest.raises(UserError, match="disagree"):
        with_training_seed(config(data, seed=2), 1)
    assert with_training_seed(config(data, seed=2), 0).train.seed == 2
