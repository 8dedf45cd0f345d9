"""SERAC (editors/serac.py, training/serac.py) and the edit memory (editors/memory.py) on tiny
random models: training makes edits in scope answer with the new target and leaves unrelated
inputs to the base model, the memory comes off exactly, and such edits refuse to be saved."""

from __future__ import annotations

import pytest
import torch
from test_mend import mend_file, target_nll
from tiny import tiny_model

import robustedit.editors  # noqa: F401  (registers the editors)
from robustedit.config import from_dict
from robustedit.editors import apply_delta, applied, get_editor
from robustedit.editors.memory import EditMemory
from robustedit.editors.serac import SERACConfig, SERACSSSConfig
from robustedit.editors.store import save_edit
from robustedit.errors import UserError
from robustedit.eval.scoring import score_pairs
from robustedit.request import EditRequest
from robustedit.training.trainers import train_editor


def config(data: str, cls=SERACConfig, **train) -> SERACConfig:
    settings = {"steps": 60, "batch_size": 4, "lr": 3e-3, "classifier_lr": 3e-2, "val_every": 0,
                "save_every": 30, "val_cases": 2, "val_fraction": 0.2, "dataset": data, **train}
    return from_dict(cls, {"head_dim": 16, "cf_layers": 2, "classifier_layer": 1, "train": settings})


def logits(lm, text: str) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(**lm.tokenizer(text, return_tensors="pt")).logits


@pytest.fixture(scope="module")
def trained(tokenizer, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serac")
    lm = tiny_model("llama", tokenizer)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as conftest does per test: module fixtures run before it
    try:
        out, meta = train_editor("serac", lm, config(mend_file(tmp)), tmp / "serac")
    finally:
        torch.set_num_threads(threads)
    return lm, out, meta


def test_an_untrained_editor_is_a_one_line_error(tokenizer):
    with pytest.raises(UserError, match="train it first with `robustedit train serac"):
        get_editor("serac", tiny_model("llama", tokenizer))


def test_a_trained_editor_answers_in_scope_and_leaves_the_rest(trained):
    lm, out, meta = trained
    assert meta["validation"]["val_out_of_scope_loc"] >= 0.5
    editor = get_editor("serac", lm, **{"checkpoint": str(out)})
    request = EditRequest("What colour is {}?", "Lima", "gold")  # a training edit
    unrelated = "nq question: who wrote book number 3"
    before = logits(lm, unrelated)
    nll0 = target_nll(lm, request)
    delta = editor.edit([request])
    assert not delta.weights and len(delta.memory) == 1
    scored0 = score_pairs(lm, [(request.text, "gold")])[0].logprob
    with applied(lm, delta):
        assert target_nll(lm, request) < nll0 - 0.5
        assert score_pairs(lm, [(request.text, "gold")])[0].logprob > scored0 + 0.5  # the evaluation's path
        assert torch.equal(logits(lm, unrelated), before)  # out of scope: the base model's own logits
    assert EditMemory.installed(lm.model) == []
    assert torch.equal(logits(lm, unrelated), before)


def test_memory_edits_refuse_to_be_saved_and_come_off_in_any_order(trained, tmp_path):
    lm, out, _ = trained
    editor = get_editor("serac", lm, **{"checkpoint": str(out)})
    requests = [EditRequest("What colour is {}?", s, "red") for s in ("Oslo", "Rome")]
    with pytest.raises(UserError, match="cannot be saved"):
        save_edit(tmp_path / "e", lm, editor.edit(requests[:1]), requests[:1], {})
    first, second = apply_delta(lm, editor.edit(requests[:1])), apply_delta(lm, editor.edit(requests[1:]))
    assert [e.request for e in EditMemory.installed(lm.model)] == requests
    first.restore()
    assert [e.request for e in EditMemory.installed(lm.model)] == requests[1:]
    second.restore()
    assert not hasattr(lm.model, EditMemory.ATTRIBUTE)


def test_serac_with_sss_trains_the_counterfactual_model_with_the_regularizer(tokenizer, tmp_path):
    import json

    lm = tiny_model("llama", tokenizer)
    out, meta = train_editor("serac+sss", lm, config(mend_file(tmp_path), SERACSSSConfig, steps=2, log_every=1),
                             tmp_path / "s")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if '"train"' in line]
    assert len(log) == 2 and all(r["sss"] > 0 for r in log)
    assert get_editor("serac+sss", lm, **{"checkpoint": str(out)}).edit([EditRequest("What colour is {}?", "Oslo", "red")]).memory
    # SSS acts in training only: asking this network for another C would record settings it was not made with
    with pytest.raises(UserError, match=r"sss.coefficient=0.25 \(trained with"):
        get_editor("serac+sss", lm, sets=["sss.coefficient=0.25"], checkpoint=str(out))


def test_a_sequential_run_keeps_every_edit_in_memory_and_ends_with_none(trained, tmp_path):
    from robustedit.data import Case
    from robustedit.eval.runner import RunInfo
    from robustedit.eval.sequential import SequentialPlan, run_sequential

    lm, out, _ = trained
    editor = get_editor("serac", lm, **{"checkpoint": str(out)})
    cases = [Case(str(i), EditRequest("What colour is {}?", s, "gold", "grey"), paraphrase_prompts=(f"Which colour does {s} have?",),
                  neighborhood_prompts=("nq question: who wrote book number 3",), neighborhood_answer="Someone Else")
             for i, s in enumerate(["Lima", "Oslo", "Rome", "Paris"])]
    run = RunInfo("serac", lm.name, "hand-made", {}, command="test")
    summary = run_sequential(editor, cases[:3], cases[3:], tmp_path, run, SequentialPlan(3, 1))  # save_edits on
    assert summary["n_cases"] == 3 and not (tmp_path / "edits").exists()
    assert EditMemory.installed(lm.model) == []


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
def test_the_encoder_stops_at_its_layer_and_gives_that_layers_states(tokenizer, arch):
    from robustedit.editors.serac import BaseEncoder

    lm = tiny_model(arch, tokenizer)
    texts = ["What colour is Lima?", "Oslo"]
    batch = lm.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        every = lm.base(**batch, output_hidden_states=True).hidden_states
    m = batch["attention_mask"][..., None].float()
    for layer in (0, 1, lm.n_layers):
        expected = (every[layer].float() * m).sum(1) / m.sum(1)
        torch.testing.assert_close(BaseEncoder(lm, layer)(texts), expected, rtol=1e-5, atol=1e-5)


def test_rerouting_a_padded_batch_equals_rerouting_each_row_alone(trained):
    """Every in-scope row's counterfactual logits come from one padded forward; each must equal
    the counterfactual model run on that row alone after its edit's context."""
    lm, out, _ = trained
    system = get_editor("serac", lm, **{"checkpoint": str(out), "threshold": 1e-6}).system  # every row in scope
    memory = [EditRequest("What colour is {}?", "Lima", "gold"), EditRequest("What colour is {}?", "Oslo", "red")]
    texts = ["What colour is Lima? gold", "Which colour does Oslo have?", "nq question: who wrote book number 3 ok"]
    batch = lm.tokenizer(texts, padding=True, return_tensors="pt")  # right padding: rows of three lengths
    with torch.no_grad():
        base = lm.model(**batch).logits
        rerouted = system.reroute(batch["input_ids"], batch["attention_mask"], base, memory)
        best, _ = system.scope(texts, memory)
        for i, j in enumerate(best.tolist()):
            real = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
            ctx = system.context_ids(memory[j])
            alone = system.cf.model(input_ids=torch.tensor([ctx + real])).logits[0, -len(real):]
            torch.testing.assert_close(rerouted[i, :len(real)], alone, rtol=1e-4, atol=1e-4)
