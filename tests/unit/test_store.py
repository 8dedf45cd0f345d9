"""A saved edit, or sequence of edits, re-applies to a fresh copy of the model bit-exactly and
undoes bit-exactly; other models, an already edited model and folders that are not saved edits
are refused."""

import json
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import same_state, state_copy, tiny_model

from robustedit.editors import Delta, get_editor
from robustedit.editors.store import EditSequence, load_edit, save_edit, undo_saved
from robustedit.errors import UserError
from robustedit.models.load import wrap
from robustedit.request import EditRequest

SETTINGS = {"layer": 1, "stats": {"n_tokens": 2048, "seq_len": 64, "batch_size": 8},
            "context_template_length_params": [[3, 5]], "v_num_grad_steps": 5}
REQUEST = EditRequest("The mother tongue of {}", "Danielle Darrieux", "English", "French")


def test_save_load_undo_round_trip(tokenizer, tmp_path):
    lm = tiny_model("llama", tokenizer)
    delta = get_editor("rome", lm, **SETTINGS).edit([REQUEST])
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
    delta = get_editor("rome", lm, **SETTINGS).edit([REQUEST])
    save_edit(tmp_path / "edit", lm, delta, [REQUEST], SETTINGS)
    other = tiny_model("llama", tokenizer, seed=1)
    with pytest.raises(UserError, match="was made for model"):
        load_edit(tmp_path / "edit", other)


def test_save_refuses_existing_folder_and_load_refuses_garbage(tokenizer, tmp_path):
    lm = tiny_model("llama", tokenizer)
    delta = get_editor("rome", lm, **SETTINGS).edit([REQUEST])
    (tmp_path / "taken").mkdir()
    with pytest.raises(UserError, match="already exists"):
        save_edit(tmp_path / "taken", lm, delta, [REQUEST], SETTINGS)
    with pytest.raises(UserError, match="not a saved robustedit edit"):
        load_edit(tmp_path / "taken", lm)


# --- sequences of edits -------------------------------------------------------------------------
# Synthetic deltas (random tensors on the down-projections) stand in for an editor's: the store
# neither knows nor cares how a delta was computed.

STEPS = ((0, 1), (1, 2), (0, 2), (1,))  # layers whose down-projection each step changes: overlapping


def _model(tokenizer, dtype=torch.float32):
    lm = tiny_model("llama", tokenizer)
    return lm if dtype == torch.float32 else wrap(lm.model.to(dtype), tokenizer, lm.name)


def _deltas(lm, seed=0):
    """One Delta per entry of STEPS, random, of the size of a real edit's."""
    g = torch.Generator().manual_seed(seed)
    params = dict(lm.model.named_parameters())
    deltas = []
    for i, layers in enumerate(STEPS):
        names = [f"{lm.spec.down_proj_path(layer)}.weight" for layer in layers]
        weights = {n: 0.05 * torch.randn(params[n].shape, generator=g) for n in names}
        deltas.append(Delta(weights, {"editor": "synthetic", "step": i}))
    return deltas


def _requests(i):
    return [EditRequest("The mother tongue of {} is", f"Person {i}{j}", "English") for j in range(2)]


def _edit_in_sequence(lm, out_dir):
    """Apply every delta through an EditSequence, save it; returns (sequence, the edited state)."""
    seq = EditSequence(lm)
    for i, delta in enumerate(_deltas(lm)):
        seq.apply(delta, _requests(i), None if i == 1 else [f"case-{i}-a", f"case-{i}-b"])
    edited = state_copy(lm)
    seq.save(out_dir, "synthetic", {"layers": [0, 1, 2]})
    return seq, edited


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_sequential_save_load_undo_is_bit_exact(tokenizer, tmp_path, dtype):
    lm = _model(tokenizer, dtype)
    before = state_copy(lm)
    seq, edited = _edit_in_sequence(lm, tmp_path / "edits")
    assert same_state(lm, edited) == [], "saving changed the model"
    seq.undo()
    assert same_state(lm, before) == []

    fresh = _model(tokenizer, dtype)  # a new copy of the same weights
    backup = load_edit(tmp_path / "edits", fresh)
    assert same_state(fresh, edited) == []  # every parameter, touched or not
    backup.restore()
    assert same_state(fresh, before) == []
    load_edit(tmp_path / "edits", fresh)
    undo_saved(tmp_path / "edits", fresh)
    assert same_state(fresh, before) == []


def test_sequence_manifest_and_tensors(tokenizer, tmp_path):
    lm = _model(tokenizer)
    before = state_copy(lm)
    seq, edited = _edit_in_sequence(lm, tmp_path / "edits")
    seq.undo()
    folder = tmp_path / "edits"
    assert sorted(p.name for p in folder.iterdir()) == [
        "delta.safetensors", "edited.safetensors", "manifest.json", "original.safetensors"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model_fingerprint"] == lm.fingerprint and manifest["model"] == lm.name
    assert manifest["editor"] == "synthetic" and manifest["config"] == {"layers": [0, 1, 2]}
    assert [s["case_ids"] for s in manifest["steps"]] == [
        ["case-0-a", "case-0-b"], None, ["case-2-a", "case-2-b"], ["case-3-a", "case-3-b"]]
    assert manifest["steps"][3]["requests"][1]["subject"] == "Person 31"
    assert manifest["steps"][2]["info"] == {"editor": "synthetic", "step": 2}

    touched = {f"{lm.spec.down_proj_path(layer)}.weight" for layers in STEPS for layer in layers}
    original, after, delta = (load_file(str(folder / f"{k}.safetensors")) for k in ("original", "edited", "delta"))
    assert original.keys() == after.keys() == delta.keys() == touched
    for name in touched:
        assert torch.equal(original[name], before[name])
        assert torch.equal(after[name], edited[name])
        assert torch.equal(delta[name], edited[name] - before[name])


def test_sequence_snapshots_each_parameter_once(tokenizer):
    lm = _model(tokenizer)
    before = state_copy(lm)
    seq = EditSequence(lm)
    deltas = _deltas(lm)
    seq.apply(deltas[0], _requests(0))
    first = dict(seq.originals)
    seq.apply(deltas[1], _requests(1))
    seq.apply(deltas[2], _requests(2))
    try:
        for name, value in first.items():
            assert seq.originals[name] is value  # not re-copied when touched again
        for name, value in seq.originals.items():
            assert torch.equal(value, before[name])
        with pytest.raises(ValueError, match="case ids"):
            seq.apply(deltas[3], _requests(3), ["only-one"])
        assert len(seq.steps) == 3
    finally:
        seq.undo()
    assert same_state(lm, before) == []
    assert seq.steps == [] and seq.originals == {}


def test_loading_twice_is_refused(tokenizer, tmp_path):
    lm = _model(tokenizer)
    seq, edited = _edit_in_sequence(lm, tmp_path / "edits")
    seq.undo()
    load_edit(tmp_path / "edits", lm)
    with pytest.raises(UserError, match="undo it first"):
        load_edit(tmp_path / "edits", lm)
    assert same_state(lm, edited) == [], "the refused load changed the model"


def test_sequence_refuses_another_model(tokenizer, tmp_path):
    lm = _model(tokenizer)
    seq, _ = _edit_in_sequence(lm, tmp_path / "edits")
    seq.undo()
    other = tiny_model("llama", tokenizer, seed=1)
    before = state_copy(other)
    for action in (load_edit, undo_saved):
        with pytest.raises(UserError, match="was made for model") as err:
            action(tmp_path / "edits", other)
        assert lm.fingerprint in str(err.value) and other.fingerprint in str(err.value)
    assert same_state(other, before) == []


def test_sequence_save_refusals(tokenizer, tmp_path):
    lm = _model(tokenizer)
    seq = EditSequence(lm)
    with pytest.raises(UserError, match="empty"):
        seq.save(tmp_path / "nothing", "synthetic", {})
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "taken").mkdir()
    seq.apply(_deltas(lm)[0], _requests(0))
    try:
        with pytest.raises(UserError, match="already exists"):
            seq.save(tmp_path / "taken", "synthetic", {})
    finally:
        seq.undo()
    assert list((tmp_path / "taken").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no staging folder left behind


@pytest.mark.parametrize("damage", ["no-fingerprint", "not-json", "garbage-tensors", "no-original"])
def test_load_refuses_folders_that_are_not_saved_edits(tokenizer, tmp_path, damage):
    lm = _model(tokenizer)
    seq, _ = _edit_in_sequence(lm, tmp_path / "edits")
    seq.undo()
    before = state_copy(lm)
    folder = tmp_path / "edits"
    if damage == "no-fingerprint":
        (folder / "manifest.json").write_text('{"keep": "me"}\n')
    elif damage == "not-json":
        (folder / "manifest.json").write_text("{'single': 'quotes'}")
    elif damage == "garbage-tensors":
        (folder / "edited.safetensors").write_bytes(b"\x00\x01precious")
    else:
        (folder / "original.safetensors").unlink()
    with pytest.raises(UserError, match="not a saved robustedit edit"):
        load_edit(folder, lm)
    assert same_state(lm, before) == []


def test_single_edit_folder_of_the_first_format_still_loads(tokenizer, tmp_path):
    """A folder as save_edit wrote it before sequences: delta + original, no edited, no steps."""
    lm = _model(tokenizer)
    before = state_copy(lm)
    delta = _deltas(lm)[0]
    folder = tmp_path / "old"
    folder.mkdir()
    params = dict(lm.model.named_parameters())
    save_file({k: v.contiguous() for k, v in delta.weights.items()}, str(folder / "delta.safetensors"))
    save_file({k: params[k].detach().contiguous() for k in delta.weights}, str(folder / "original.safetensors"))
    (folder / "manifest.json").write_text(json.dumps({
        "robustedit": "0.1.0", "model": lm.name, "model_fingerprint": lm.fingerprint, "editor": "synthetic",
        "config": {}, "requests": [asdict(r) for r in _requests(0)], "info": delta.info}))

    backup = load_edit(folder, lm)
    for name, d in delta.weights.items():
        assert torch.equal(params[name], before[name] + d)
    with pytest.raises(UserError, match="undo it first"):
        load_edit(folder, lm)
    backup.restore()
    assert same_state(lm, before) == []
    load_edit(folder, lm)
    undo_saved(folder, lm)
    assert same_state(lm, before) == []


def test_save_edit_is_a_sequence_of_one_and_leaves_the_model_alone(tokenizer, tmp_path):
    lm = _model(tokenizer)
    before = state_copy(lm)
    delta = _deltas(lm)[1]
    save_edit(tmp_path / "one", lm, delta, _requests(1), {"x": 1})
    assert same_state(lm, before) == []
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert manifest["editor"] == "synthetic" and len(manifest["steps"]) == 1
    assert manifest["steps"][0]["case_ids"] is None

    seq = EditSequence(lm)  # the same edit recorded as a sequence gives the same weights
    seq.apply(delta, _requests(1))
    edited = state_copy(lm)
    seq.undo()
    load_edit(tmp_path / "one", lm)
    assert same_state(lm, edited) == []
    undo_saved(tmp_path / "one", lm)
    assert same_state(lm, before) == []
