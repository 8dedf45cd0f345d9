"""A saved edit, or sequence of edits, re-applies to a fresh copy of the model bit-exactly and
undoes bit-exactly; saved edits stack (deltas add, adaptors stack) and come off in reverse order;
a float32 edit loads onto a bfloat16 / float16 copy of its model; the delta is stored once;
other models, changes the edit cannot explain and folders that are not saved edits are refused;
folders of the earlier formats still load."""

import json
import logging
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import same_state, state_copy, tiny_model

from robustedit.editors import Delta, applied, get_editor
from robustedit.editors.adaptors import AdaptorStack, KeyAdaptor
from robustedit.editors.saved import checksum, load_edit, load_edits, loaded_edits, undo_saved
from robustedit.editors.store import EditSequence, save_edit
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
    assert sorted(p.name for p in folder.iterdir()) == ["delta.safetensors", "manifest.json"]  # the delta, once
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == 4 and manifest["on_top_of"] == [] and len(manifest["edit_id"]) == 32
    assert manifest["model_fingerprint"] == lm.fingerprint and manifest["model"] == lm.name
    assert manifest["editor"] == "synthetic" and manifest["config"] == {"layers": [0, 1, 2]}
    assert [s["case_ids"] for s in manifest["steps"]] == [
        ["case-0-a", "case-0-b"], None, ["case-2-a", "case-2-b"], ["case-3-a", "case-3-b"]]
    assert manifest["steps"][3]["requests"][1]["subject"] == "Person 31"
    assert manifest["steps"][2]["info"] == {"editor": "synthetic", "step": 2}

    touched = {f"{lm.spec.down_proj_path(layer)}.weight" for layers in STEPS for layer in layers}
    delta = load_file(str(folder / "delta.safetensors"))
    assert delta.keys() == manifest["tensors"].keys() == touched
    for name in touched:
        meta = manifest["tensors"][name]
        exact = edited[name].double() - before[name].double()
        # several steps summed: float32 does not round-trip, the float64 difference does
        assert meta["delta_dtype"] == "float64" and delta[name].dtype == torch.float64
        assert torch.equal(delta[name], exact) and meta["inexact"] == 0
        assert torch.equal((before[name].double() + delta[name]).float(), edited[name])
        assert meta["dtype"] == "float32" and meta["shape"] == list(before[name].shape)
        assert meta["original_sha256"] == {t: checksum(before[name].to(getattr(torch, t)))
                                           for t in ("float32", "bfloat16", "float16")}
        assert meta["loaded_sha256"] == checksum(edited[name])


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


@pytest.mark.parametrize("damage", ["no-fingerprint", "not-json", "garbage-tensors", "no-delta"])
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
        (folder / "delta.safetensors").write_bytes(b"\x00\x01precious")
    else:
        (folder / "delta.safetensors").unlink()
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


# --- format 4: the delta once; stacking; other dtypes -----------------------------------------------

def _logits(lm, text="The mother tongue of Danielle Darrieux is"):
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


def _rome(lm, request=REQUEST):
    return get_editor("rome", lm, **SETTINGS).edit([request])


def test_a_single_edit_stores_the_editors_delta_once(tokenizer, tmp_path):
    lm = _model(tokenizer)
    delta = _rome(lm)
    save_edit(tmp_path / "e", lm, delta, [REQUEST], SETTINGS)
    folder = tmp_path / "e"
    assert sorted(p.name for p in folder.iterdir()) == ["delta.safetensors", "manifest.json"]
    (name, d), = delta.weights.items()
    stored = load_file(str(folder / "delta.safetensors"))
    assert stored.keys() == {name} and stored[name].dtype == torch.float32 and torch.equal(stored[name], d)
    assert (folder / "delta.safetensors").stat().st_size < d.numel() * 4 + 1024  # one copy and a header
    meta = json.loads((folder / "manifest.json").read_text())["tensors"][name]
    assert meta["delta_dtype"] == "float32" and meta["inexact"] == 0


@pytest.mark.parametrize("editor", ["rome", "memit"])
def test_a_real_multi_step_sequence_loads_bit_exactly(tokenizer, tmp_path, editor):
    """The float64 difference of a 3-step ROME / MEMIT sequence restores the step-by-step weights."""
    lm = _model(tokenizer)
    settings = SETTINGS if editor == "rome" else {**SETTINGS, "layers": [0, 1]}
    settings = {k: v for k, v in settings.items() if not (editor == "memit" and k == "layer")}
    ed = get_editor(editor, lm, **settings)
    before = state_copy(lm)
    seq = EditSequence(lm)
    subjects = ("Danielle Darrieux", "Michael Jordan", "the Eiffel Tower")
    for i, subject in enumerate(subjects):
        request = EditRequest("The mother tongue of {} is", subject, ("English", "German", "Italian")[i])
        delta = ed.edit([request])
        seq.apply(delta, [request])
        ed.commit(delta)
    edited = state_copy(lm)
    seq.save(tmp_path / "seq", editor, settings)
    seq.undo()
    manifest = json.loads((tmp_path / "seq" / "manifest.json").read_text())
    assert manifest["n_steps"] == 3 and all(t["inexact"] == 0 for t in manifest["tensors"].values())
    backup = load_edit(tmp_path / "seq", lm)
    assert same_state(lm, edited) == []
    backup.restore()
    assert same_state(lm, before) == []


def test_a_weight_shrunk_out_of_float64_reach_is_counted_not_hidden(tokenizer, tmp_path, caplog):
    """Three near-cancellations of one weight (each float32 step can shrink it by 2⁻²³ at most) take
    it ~2⁻⁵⁹ below its original value: no float64 delta added to the original gives it back."""
    lm = _model(tokenizer)
    before = state_copy(lm)
    name = lm.down_proj_weight_name(0)
    weight = dict(lm.model.named_parameters())[name]
    seq = EditSequence(lm)
    for target in (1.5 * 2**-20, 1.5 * 2**-40, 1.2345 * 2**-60):
        d = torch.zeros_like(weight)
        d[0, 0] = (torch.tensor(target, dtype=torch.float64) - weight[0, 0].double()).float()
        seq.apply(Delta({name: d}, {"editor": "synthetic"}), _requests(0))
    edited = state_copy(lm)
    assert 0 < abs(edited[name][0, 0]) < 2**-50 * abs(before[name][0, 0])
    with caplog.at_level(logging.WARNING, logger="robustedit.editors.store"):
        seq.save(tmp_path / "e", "synthetic", {})
    seq.undo()
    assert "cannot be stored exactly" in caplog.text
    assert json.loads((tmp_path / "e" / "manifest.json").read_text())["tensors"][name]["inexact"] == 1
    backup = load_edit(tmp_path / "e", lm)
    assert same_state(lm, edited) == [name]
    got = lm.model.state_dict()[name]
    assert int((got != edited[name]).sum()) == 1
    assert abs(float(got[0, 0]) - float(edited[name][0, 0])) <= 2**-52 * abs(float(before[name][0, 0]))
    backup.restore()
    assert same_state(lm, before) == []


def test_saved_edits_stack_and_come_off_in_reverse_order(tokenizer, tmp_path):
    lm = _model(tokenizer)
    before = state_copy(lm)
    a, b = _deltas(lm, seed=0)[0], _deltas(lm, seed=1)[2]  # layers (0, 1) and (0, 2): both change layer 0
    save_edit(tmp_path / "a", lm, a, _requests(0), {})
    save_edit(tmp_path / "b", lm, b, _requests(1), {})  # both made on the unedited model
    with applied(lm, a), applied(lm, b):
        both = state_copy(lm)  # the deltas add

    first = load_edit(tmp_path / "a", lm)
    second = load_edit(tmp_path / "b", lm)
    assert same_state(lm, both) == []
    assert [e.source for e in loaded_edits(lm.model)] == [str(tmp_path / "a"), str(tmp_path / "b")]
    with pytest.raises(UserError, match="undo those first"):
        first.restore()  # b changed layer 0 after it
    with pytest.raises(UserError, match="already carries this edit"):
        load_edit(tmp_path / "a", lm)
    assert same_state(lm, both) == []
    second.restore()
    first.restore()
    first.restore()  # a second restore does nothing
    assert same_state(lm, before) == [] and loaded_edits(lm.model) == []

    backup = load_edits([tmp_path / "a", tmp_path / "b"], lm)  # one backup for both
    assert same_state(lm, both) == []
    backup.restore()
    assert same_state(lm, before) == []

    load_edits([tmp_path / "a", tmp_path / "b"], lm)
    with pytest.raises(UserError, match="undo those first"):
        undo_saved(tmp_path / "a", lm)
    undo_saved(tmp_path / "b", lm)
    undo_saved(tmp_path / "a", lm)
    assert same_state(lm, before) == [] and loaded_edits(lm.model) == []

    with pytest.raises(UserError, match="not a saved robustedit edit"):
        load_edits([tmp_path / "a", tmp_path / "b", tmp_path / "nothing"], lm)
    assert same_state(lm, before) == [] and loaded_edits(lm.model) == []  # the two loaded are undone


def _with_adaptor(lm, delta, layer, seed):
    """``delta`` plus an always-open key adaptor on the down-projection of ``layer`` (REP's kind)."""
    module = lm.spec.down_proj_path(layer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adaptor = KeyAdaptor(lm.down_proj(layer).in_features, rank=4, dropout=0.0, tau=0.0).eval()
    return Delta(delta.weights, delta.info, adaptors={module: adaptor})


def test_adaptors_of_saved_edits_stack_on_the_module(tokenizer, tmp_path):
    lm = _model(tokenizer)
    before, logits = state_copy(lm), _logits(lm)
    a = _with_adaptor(lm, _deltas(lm, seed=0)[0], 1, seed=0)
    b = _with_adaptor(lm, _deltas(lm, seed=1)[1], 1, seed=1)
    save_edit(tmp_path / "a", lm, a, _requests(0), {})
    save_edit(tmp_path / "b", lm, b, _requests(1), {})
    with applied(lm, a), applied(lm, b):
        expected, both = _logits(lm), state_copy(lm)
    backup = load_edits([tmp_path / "a", tmp_path / "b"], lm)
    module = lm.down_proj(1)
    assert [x.tag() for x in AdaptorStack.installed(module)] == [x.tag() for x in (*a.adaptors.values(),
                                                                                     *b.adaptors.values())]
    assert same_state(lm, both) == [] and torch.equal(_logits(lm), expected)
    backup.restore()
    assert AdaptorStack.installed(module) == [] and same_state(lm, before) == []
    assert torch.equal(_logits(lm), logits)


def test_an_edit_saved_on_top_of_a_loaded_one_needs_it_first(tokenizer, tmp_path):
    lm = _model(tokenizer)
    before = state_copy(lm)
    a, b = _deltas(lm, seed=0)[0], _deltas(lm, seed=1)[2]
    save_edit(tmp_path / "a", lm, a, _requests(0), {})
    first = load_edit(tmp_path / "a", lm)
    save_edit(tmp_path / "b", lm, b, _requests(1), {})  # made on the model carrying a
    with applied(lm, b):
        both = state_copy(lm)
    first.restore()
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    a_id = json.loads((tmp_path / "a" / "manifest.json").read_text())["edit_id"]
    assert manifest["on_top_of"] == [{"edit_id": a_id, "source": str(tmp_path / "a")}]
    with pytest.raises(UserError, match="load them first") as err:
        load_edit(tmp_path / "b", lm)
    assert str(tmp_path / "a") in str(err.value)
    assert same_state(lm, before) == []
    backup = load_edits([tmp_path / "a", tmp_path / "b"], lm)
    assert same_state(lm, both) == []
    backup.restore()
    assert same_state(lm, before) == []


def test_an_edit_saved_beside_a_loaded_one_loads_alone_with_a_warning(tokenizer, tmp_path, caplog):
    lm = _model(tokenizer)
    before = state_copy(lm)
    a = _deltas(lm)[0]  # layers 0 and 1
    name = lm.down_proj_weight_name(2)
    b = Delta({name: 0.05 * torch.randn(before[name].shape)}, {"editor": "synthetic"})
    save_edit(tmp_path / "a", lm, a, _requests(0), {})
    first = load_edit(tmp_path / "a", lm)
    save_edit(tmp_path / "b", lm, b, _requests(1), {})  # computed with a in place, on weights a leaves alone
    first.restore()
    with caplog.at_level(logging.WARNING, logger="robustedit.editors.store"):
        backup = load_edit(tmp_path / "b", lm)
    assert "which are not loaded" in caplog.text and str(tmp_path / "a") in caplog.text
    assert same_state(lm, before) == [name]
    backup.restore()
    assert same_state(lm, before) == []


def test_a_change_made_in_memory_under_a_saved_edit_is_refused(tokenizer, tmp_path):
    lm = _model(tokenizer)
    a, b = _deltas(lm, seed=0)[0], _deltas(lm, seed=1)[2]
    save_edit(tmp_path / "a", lm, a, _requests(0), {})
    save_edit(tmp_path / "b", lm, b, _requests(1), {})
    unsaved = _deltas(lm, seed=2)[0]
    with applied(lm, unsaved):
        changed = state_copy(lm)
        with pytest.raises(UserError, match="made in memory"):
            load_edit(tmp_path / "a", lm)
        assert same_state(lm, changed) == []
    backup = load_edit(tmp_path / "b", lm)
    with applied(lm, unsaved), pytest.raises(UserError, match="made in memory"):  # on a loaded edit: the same
        load_edit(tmp_path / "a", lm)
    backup.restore()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_a_float32_edit_loads_onto_a_low_precision_copy_of_its_model(tokenizer, tmp_path, dtype):
    lm = _model(tokenizer)
    delta = _rome(lm)
    save_edit(tmp_path / "rome", lm, delta, [REQUEST], SETTINGS)
    seq, _ = _edit_in_sequence(lm, tmp_path / "seq")  # float64 deltas
    seq.undo()
    seq_delta = load_file(str(tmp_path / "seq" / "delta.safetensors"))

    low = _model(tokenizer, dtype)  # the same weights in bfloat16 / float16: another fingerprint
    assert low.fingerprint != lm.fingerprint
    before = state_copy(low)
    backup = load_edit(tmp_path / "rome", low)
    now = low.model.state_dict()
    for name, d in delta.weights.items():  # added in float32, rounded once: the nearest low-precision value
        assert now[name].dtype == dtype and torch.equal(now[name], (before[name].float() + d).to(dtype))
    assert same_state(low, before) == list(delta.weights)
    backup.restore()
    assert same_state(low, before) == []

    backup = load_edit(tmp_path / "seq", low)
    now = low.model.state_dict()
    for name, d in seq_delta.items():
        assert torch.equal(now[name], (before[name].double() + d).to(dtype))
    backup.restore()
    assert same_state(low, before) == []

    other = wrap(tiny_model("llama", tokenizer, seed=1).model.to(dtype), tokenizer, "tiny-llama")
    with pytest.raises(UserError, match=f"cast to {str(dtype).removeprefix('torch.')}"):
        load_edit(tmp_path / "rome", other)


def test_undo_saved_of_a_format_4_folder_not_loaded_is_refused(tokenizer, tmp_path):
    lm = _model(tokenizer)
    seq, edited = _edit_in_sequence(lm, tmp_path / "edits")  # lm edited step by step, nothing loaded
    with pytest.raises(UserError, match="holds the delta only"):
        undo_saved(tmp_path / "edits", lm)
    assert same_state(lm, edited) == []
    seq.undo()


def test_a_damaged_delta_is_detected_and_the_model_left_unchanged(tokenizer, tmp_path):
    lm = _model(tokenizer)
    before = state_copy(lm)
    save_edit(tmp_path / "a", lm, _deltas(lm)[0], _requests(0), {})
    tensors = load_file(str(tmp_path / "a" / "delta.safetensors"))
    name = min(tensors)
    tensors[name][0, 0] += 1.0
    save_file(tensors, str(tmp_path / "a" / "delta.safetensors"))
    with pytest.raises(UserError, match="is damaged"):
        load_edit(tmp_path / "a", lm)
    assert same_state(lm, before) == [] and loaded_edits(lm.model) == []


# --- earlier formats ---------------------------------------------------------------------------------

def _write_format_2(lm, folder, seq, adaptors=()):
    """A sequence as robustedit wrote it before format 4: original + edited + delta (+ adaptors: format 3)."""
    params = dict(lm.model.named_parameters())
    original = {n: v.contiguous() for n, v in seq.originals.items()}
    edited = {n: params[n].detach().clone().contiguous() for n in seq.originals}
    folder.mkdir()
    save_file(original, str(folder / "original.safetensors"))
    save_file(edited, str(folder / "edited.safetensors"))
    save_file({n: edited[n] - original[n] for n in original}, str(folder / "delta.safetensors"))
    manifest = {"robustedit": "0.2.0", "format": 3 if adaptors else 2, "model": lm.name,
                "model_fingerprint": lm.fingerprint, "editor": "synthetic", "config": {},
                "n_steps": len(seq.steps), "steps": seq.steps}
    if adaptors:
        manifest["adaptors"] = [{"module": m, "tag": a.tag(), "config": a.config()} for m, a in adaptors]
        save_file({f"{i}.{k}": v.contiguous() for i, (_, a) in enumerate(adaptors) for k, v in a.state_dict().items()},
                  str(folder / "adaptors.safetensors"))
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("with_adaptor", [False, True], ids=["format-2", "format-3"])
def test_folders_of_formats_2_and_3_still_load_stack_and_undo(tokenizer, tmp_path, with_adaptor):
    lm = _model(tokenizer)
    before = state_copy(lm)
    seq = EditSequence(lm)
    for i, delta in enumerate(_deltas(lm)):
        if with_adaptor and i == 0:
            delta = _with_adaptor(lm, delta, 1, seed=0)
        seq.apply(delta, _requests(i))
    edited, logits = state_copy(lm), _logits(lm)
    _write_format_2(lm, tmp_path / "old", seq, seq.adaptors)
    undo_saved(tmp_path / "old", lm)  # from the folder, as before: originals copied back, adaptors off
    assert same_state(lm, before) == [] and AdaptorStack.installed(lm.down_proj(1)) == []
    seq.originals, seq.adaptors, seq.steps = {}, [], []

    backup = load_edit(tmp_path / "old", lm)  # on the weights it was made on: edited copied in
    assert same_state(lm, edited) == [] and torch.equal(_logits(lm), logits)
    with pytest.raises(UserError, match="undo it first"):
        load_edit(tmp_path / "old", lm)
    backup.restore()
    assert same_state(lm, before) == [] and AdaptorStack.installed(lm.down_proj(1)) == []

    new = _deltas(lm, seed=3)[0]  # a format-4 edit under it: the old one adds edited - original (float64)
    save_edit(tmp_path / "new", lm, new, _requests(9), {})
    load_edits([tmp_path / "new", tmp_path / "old"], lm)
    now = lm.model.state_dict()
    for name in seq_names(lm):
        base = before[name].clone()
        if name in new.weights:
            base += new.weights[name]
        expect = (base.double() + (edited[name].double() - before[name].double())).float()
        assert torch.equal(now[name], expect)
    undo_saved(tmp_path / "old", lm)
    undo_saved(tmp_path / "new", lm)
    assert same_state(lm, before) == [] and AdaptorStack.installed(lm.down_proj(1)) == []


def seq_names(lm):
    return sorted({f"{lm.spec.down_proj_path(layer)}.weight" for layers in STEPS for layer in layers})
