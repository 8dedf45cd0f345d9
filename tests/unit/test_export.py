"""``export_edits`` writes a Hugging Face folder that ``AutoModelForCausalLM.from_pretrained`` loads
with the saved edits in its weights (tied embeddings, GPT-2's Conv1D layout and stacked edits
included) and leaves the in-memory model exactly as it was; edits outside the weights (REP's key
adaptors, SERAC's memory) and every other mistake are refused before anything is written."""

import json

import pytest
import torch
from tiny import same_state, state_copy, tiny_model

from robustedit.editors import Delta, applied, get_editor
from robustedit.editors.adaptors import KeyAdaptor
from robustedit.editors.memory import EditMemory, MemoryEdit
from robustedit.editors.memory import install as install_memory
from robustedit.editors.memory import uninstall as uninstall_memory
from robustedit.editors.saved import load_edits, loaded_edits
from robustedit.editors.store import save_edit
from robustedit.errors import UserError
from robustedit.request import EditRequest
from robustedit.use.export import RECORD, export_edits

SETTINGS = {"layer": 1, "stats": {"n_tokens": 2048, "seq_len": 64, "batch_size": 8},
            "context_template_length_params": [[3, 5]], "v_num_grad_steps": 5}
REQUEST = EditRequest("The mother tongue of {}", "Danielle Darrieux", "English", "French")
OTHER = EditRequest("{} plays the sport of", "Michael Jordan", "tennis", "basketball")
PROMPT = "The mother tongue of Danielle Darrieux"


def logits(model, tokenizer, text=PROMPT):
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def reload(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


def leftovers(directory, keep):
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


@pytest.mark.parametrize("arch,tied", [("llama", False), ("llama", True), ("gpt2", True)],
                         ids=["llama", "llama-tied", "gpt2-conv1d-tied"])
def test_the_exported_folder_loads_with_the_edit_in_its_weights(tokenizer, tmp_path, arch, tied):
    from transformers import AutoTokenizer

    lm = tiny_model(arch, tokenizer, tie_word_embeddings=tied)
    assert (lm.lm_head.weight is lm.module(lm.spec.embeddings).weight) == tied
    before, unedited = state_copy(lm), logits(lm.model, tokenizer)
    delta = get_editor("rome", lm, **SETTINGS).edit([REQUEST])
    save_edit(tmp_path / "edit", lm, delta, [REQUEST], SETTINGS)
    with applied(lm, delta):
        edited, expected = state_copy(lm), logits(lm.model, tokenizer)
    assert not torch.equal(expected, unedited)

    out = export_edits(lm, [tmp_path / "edit"], tmp_path / "hf")
    assert out == tmp_path / "hf"
    assert same_state(lm, before) == [] and loaded_edits(lm.model) == []  # the in-memory model is untouched
    assert leftovers(tmp_path, {"edit", "hf"}) == []  # no staging folder left behind

    model = reload(out)
    state = model.state_dict()
    assert state.keys() == edited.keys()
    assert [k for k in edited if not torch.equal(state[k], edited[k])] == []  # every weight, the edit's included
    assert [k for k in delta.weights if torch.equal(state[k], before[k])] == []
    if tied:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert torch.equal(logits(model, tokenizer), expected)
    assert AutoTokenizer.from_pretrained(out)(PROMPT)["input_ids"] == tokenizer(PROMPT)["input_ids"]

    record = json.loads((out / RECORD).read_text())
    assert record["model"] == lm.name and record["model_fingerprint"] == lm.fingerprint
    (entry,) = record["edits"]
    assert entry["editor"] == "rome" and entry["folder"] == str(tmp_path / "edit")
    assert entry["model_fingerprint"] == lm.fingerprint and entry["config"] == SETTINGS
    assert [r["subject"] for r in entry["requests"]] == ["Danielle Darrieux"]


def test_several_edits_are_exported_stacked_in_order(tokenizer, tmp_path):
    lm = tiny_model("llama", tokenizer)
    before = state_copy(lm)
    editor = get_editor("rome", lm, **SETTINGS)
    for name, request in (("a", REQUEST), ("b", OTHER)):  # both on layer 1, both made on the unedited model
        save_edit(tmp_path / name, lm, editor.edit([request]), [request], SETTINGS)
    backup = load_edits([tmp_path / "a", tmp_path / "b"], lm)
    stacked, expected = state_copy(lm), logits(lm.model, tokenizer)
    backup.restore()

    out = export_edits(lm, [tmp_path / "a", tmp_path / "b"], tmp_path / "hf")
    assert same_state(lm, before) == []
    model = reload(out)
    assert [k for k, v in model.state_dict().items() if not torch.equal(v, stacked[k])] == []
    assert torch.equal(logits(model, tokenizer), expected)
    record = json.loads((out / RECORD).read_text())
    assert [e["requests"][0]["subject"] for e in record["edits"]] == ["Danielle Darrieux", "Michael Jordan"]


def _synthetic(lm, seed=0, adaptor=False):
    g = torch.Generator().manual_seed(seed)
    name = lm.down_proj_weight_name(1)
    weight = dict(lm.model.named_parameters())[name]
    delta = Delta({name: 0.05 * torch.randn(weight.shape, generator=g)}, {"editor": "synthetic"})
    if adaptor:
        module = name.removesuffix(".weight")
        delta.adaptors[module] = KeyAdaptor(weight.shape[1], rank=4, dropout=0.0, tau=0.0).eval()
    return delta


def test_edits_outside_the_weights_and_other_mistakes_are_refused_before_writing(tokenizer, tmp_path):
    lm = tiny_model("llama", tokenizer)
    before = state_copy(lm)
    save_edit(tmp_path / "plain", lm, _synthetic(lm), [REQUEST], {})
    save_edit(tmp_path / "rep", lm, _synthetic(lm, 1, adaptor=True), [REQUEST], {})
    other = tiny_model("llama", tokenizer, seed=1)
    save_edit(tmp_path / "foreign", other, _synthetic(other), [REQUEST], {})
    (tmp_path / "taken").mkdir()
    keep = {"plain", "rep", "foreign", "taken"}

    def refused(match, edits, out=tmp_path / "hf"):
        with pytest.raises(UserError, match=match) as err:
            export_edits(lm, edits, out)
        assert "\n" not in str(err.value)
        assert leftovers(tmp_path, keep) == [], "something was written"
        assert list((tmp_path / "taken").iterdir()) == []
        assert same_state(lm, before) == [] and loaded_edits(lm.model) == []

    refused("already exists", [tmp_path / "plain"], tmp_path / "taken")
    refused("nothing to export", [])
    refused("key adaptors outside the weights.*cannot be exported as plain weights",
            [tmp_path / "plain", tmp_path / "rep"])
    refused("was made for model", [tmp_path / "plain", tmp_path / "foreign"])
    refused("not a saved robustedit edit", [tmp_path / "plain", tmp_path / "taken"])
    with applied(lm, _synthetic(lm, 2, adaptor=True)), \
            pytest.raises(UserError, match="key adaptors on .*cannot be exported as plain weights"):
        export_edits(lm, [tmp_path / "plain"], tmp_path / "hf")  # an adaptor applied in memory

    class Router:
        def reroute(self, input_ids, attention_mask, logits, memory):
            return logits

    entry = MemoryEdit(REQUEST, Router())
    install_memory(lm.model, entry)
    try:
        with pytest.raises(UserError, match=r"edit memory \(SERAC\).*cannot be exported as plain weights"):
            export_edits(lm, [tmp_path / "plain"], tmp_path / "hf")
    finally:
        uninstall_memory(lm.model, entry)
    assert EditMemory.installed(lm.model) == []
    assert leftovers(tmp_path, keep) == [] and same_state(lm, before) == []


def test_a_failure_while_writing_leaves_no_folder_and_the_model_restored(tokenizer, tmp_path, monkeypatch):
    lm = tiny_model("llama", tokenizer)
    before = state_copy(lm)
    save_edit(tmp_path / "plain", lm, _synthetic(lm), [REQUEST], {})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(lm.tokenizer, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        export_edits(lm, [tmp_path / "plain"], tmp_path / "hf")
    assert leftovers(tmp_path, {"plain"}) == []
    assert same_state(lm, before) == [] and loaded_edits(lm.model) == []
