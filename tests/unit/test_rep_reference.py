"""REP as its authors' code trains it (editors/rep_reference.py) on tiny random models: the LoRA
branch starts at exactly 0, dropout is off at test time, the training keys are the reference's,
the anchor keeps the bare prompt's key, MEMIT's layers are trained on the keys the adaptors below
them produce, and mini-batches use every key once before any repeats."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

import robustedit.editors  # noqa: F401  (registers the editors)
from robustedit.editors.adaptors import KeyAdaptor
from robustedit.editors import get_editor
from robustedit.editors.rep import REPConfig
from robustedit.editors.rep_reference import Batches, KeyPrompt, _encode, fit_reference, read_keys, reference_prompts
from robustedit.request import EditRequest, Probe

REQUEST = EditRequest("The mother tongue of {} is", "Danielle Yvonne Darrieux", "English", "French")
PROBES = (Probe(REQUEST.prompt, "Darrieux", "rephrase_subject"),
          Probe(REQUEST.prompt, "Yvonne Danielle Darrieux", "shuffle_subject"),
          Probe("Some unrelated words come first here. " + REQUEST.prompt, REQUEST.subject, "long_context"))
CONTEXTS = ["{}", "The day began. {}", "I think so. {}", "You know it. {}"]


def test_the_lora_branch_starts_at_exactly_zero_and_has_no_biases():
    torch.manual_seed(0)
    adaptor = KeyAdaptor(16, rank=4, dropout=0.1, arch="lora")
    k = torch.randn(5, 16)
    assert torch.equal(adaptor.train()(k), k) and torch.equal(adaptor.eval()(k), k)
    assert [n for n, _ in adaptor.proj.named_parameters()] == ["1.weight", "2.weight"]
    assert adaptor.config()["arch"] == "lora" and "arch" not in KeyAdaptor(16, rank=4).config()


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    adaptor = KeyAdaptor(32, rank=4, dropout=0.5, arch="lora")
    with torch.no_grad():
        adaptor.proj[2].weight.normal_()
        adaptor.gate[2].bias.fill_(50.0)  # gate open everywhere
    k = torch.randn(4, 32)
    adaptor.train()
    assert not torch.equal(adaptor(k), adaptor(k))  # fresh dropout masks
    adaptor.eval()
    assert torch.equal(adaptor(k), adaptor(k)) and torch.allclose(adaptor(k), k + adaptor.proj(k))


def test_reference_prompts_are_the_authors_training_keys():
    positives, anchors = reference_prompts([REQUEST], [PROBES], CONTEXTS)
    assert anchors == [KeyPrompt(REQUEST.prompt, REQUEST.subject, 0, "anchor")]
    kinds = Counter(p.kind for p in positives)
    # the original subject in every generated prefix (not the bare prompt: that is the anchor),
    # each rephrased / shuffled subject in every template, each long context as it is
    assert kinds == {"prefix": 3, "rephrase_subject": 4, "shuffle_subject": 4, "long_context": 1}
    assert KeyPrompt("I think so. " + REQUEST.prompt, "Darrieux", 0, "rephrase_subject") in positives
    assert all(p.template.count("{}") == 1 for p in positives)
    no_prefix, _ = reference_prompts([REQUEST], [PROBES], CONTEXTS, prefixes=False)
    assert "prefix" not in {p.kind for p in no_prefix}
    as_run, _ = reference_prompts([REQUEST], [PROBES], CONTEXTS, long_contexts=False)  # the code as it runs
    assert "long_context" not in {p.kind for p in as_run} and len(as_run) == len(positives) - 1
    two, two_anchors = reference_prompts([REQUEST, REQUEST], [PROBES, ()], CONTEXTS)
    assert [a.owner for a in two_anchors] == [0, 1] and Counter(p.owner for p in two) == {0: 12, 1: 3}


def test_batches_use_every_key_once_before_repeating():
    batches = Batches(10, 4, random.Random(0))
    first_epoch = batches.next() + batches.next()
    assert len(set(first_epoch)) == 8
    assert len(batches.next()) == 4  # two left over: a new shuffled epoch starts
    assert Batches(3, 15, random.Random(0)).next() != [] and len(Batches(3, 15, random.Random(0)).next()) == 3


def test_read_keys_passes_the_lower_adaptors_output_upward(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    modules = [lm.down_proj(0), lm.down_proj(1)]
    rows, last = _encode(lm, [KeyPrompt(REQUEST.prompt, REQUEST.subject, 0, "anchor"),
                              KeyPrompt("I think so. " + REQUEST.prompt, "Darrieux", 0, "prefix")])
    plain = read_keys(lm, modules, None, rows, last)
    torch.manual_seed(0)
    open_ = KeyAdaptor(modules[0].in_features, rank=4, dropout=0.0, arch="lora").eval()
    with torch.no_grad():
        open_.proj[2].weight.normal_()
        open_.gate[2].bias.fill_(50.0)
    adapted = read_keys(lm, modules, [open_, KeyAdaptor(modules[1].in_features, arch="lora").eval()], rows, last)
    assert torch.equal(adapted.subject[0], plain.subject[0])  # the lowest layer's keys are its own
    assert not torch.allclose(adapted.subject[1], plain.subject[1])  # the layer above sees the adapted keys
    assert plain.subject[0].shape == (2, modules[0].in_features)
    # every other real token of each row, in order: the subject's position left out
    assert [len(o) for o in plain.others[0]] == [len(r) - 1 for r in rows]
    # the subject's key and the others rebuild the row's keys, wherever the subject is
    first = read_keys(lm, modules[:1], None, rows[:1], [0])
    rebuilt = lambda keys, at: torch.cat([keys.others[0][0][:at], keys.subject[0][:1], keys.others[0][0][at:]])  # noqa: E731
    torch.testing.assert_close(rebuilt(plain, last[0]), rebuilt(first, 0))


def _fit(lm, anchor_weight: float, layers=(1,), steps: int = 15):
    modules = [lm.down_proj(i) for i in layers]
    positives, anchors = reference_prompts([REQUEST], [PROBES], CONTEXTS)
    goals = [torch.randn(1, m.in_features, generator=torch.Generator().manual_seed(i)) for i, m in enumerate(modules)]
    cfg = REPConfig(steps=steps, lr=1e-2, tau=0.5, anchor_weight=anchor_weight, batch_size=4)
    return fit_reference(lm, modules, goals, positives, anchors, cfg), positives, anchors


def test_training_pulls_the_keys_to_the_goal_and_the_anchor_holds_the_bare_prompt(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    (free,), _, _ = _fit(lm, anchor_weight=0.0)
    (anchored,), _, _ = _fit(lm, anchor_weight=1e4)
    assert free.info["similarity_after"] > free.info["similarity_before"] + 0.05, free.info
    assert not free.adaptor.training and free.info["kinds"]["prefix"] == 3
    assert set(free.info["gate_open_by_kind"]) == set(free.info["kinds"])
    moved = lambda info: abs(info["anchor_similarity_after"] - info["anchor_similarity_before"])  # noqa: E731
    assert moved(anchored.info) < 0.25 * moved(free.info), (anchored.info, free.info)


def test_memit_layers_train_together_on_the_keys_below_them(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    fits, positives, _ = _fit(lm, anchor_weight=1.0, layers=(0, 1))
    (alone,), _, _ = _fit(lm, anchor_weight=1.0, layers=(1,))
    assert len(fits) == 2 and all(f.info["n_keys"] == len(positives) for f in fits)
    # layer 1 reported on the keys layer 0's adaptor gives it at test time, not on the bare keys
    assert fits[0].info["gate_open_share"] > 0
    assert fits[1].info["similarity_before"] != pytest.approx(alone.info["similarity_before"], abs=1e-6)


def test_memit_rep_defaults_to_the_raw_key_goal_and_rome_rep_to_the_whitened_one(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    stats = {"n_tokens": 2048, "seq_len": 64, "batch_size": 8}
    rome = get_editor("rome+rep", lm, **{"layer": 1, "stats": stats})
    memit = get_editor("memit+rep", lm, **{"layers": [0, 1], "stats": stats})
    assert rome.goal_kind() == "whitened" and memit.goal_kind() == "key"
    k = torch.randn(1, lm.down_proj(1).in_features)
    assert torch.equal(memit.goals(1, k), k)  # the raw key, unnormalised, as the reference's layer_ks
    assert rome.goals(1, k).norm().item() == pytest.approx(1.0, abs=1e-5)  # u = C⁻¹k*/‖C⁻¹k*‖
    paper = get_editor("memit+rep", lm, **{"layers": [0, 1], "stats": stats, "rep": {"variant": "paper"}})
    assert paper.goal_kind() == "whitened"


def test_the_context_term_keeps_the_other_tokens_keys(tiny_lm_factory):
    """The authors' kl_loss (type mse) at every other token of the batch's prompts: with weight,
    their keys move less than without."""
    lm = tiny_lm_factory("llama")
    module = lm.down_proj(1)
    positives, anchors = reference_prompts([REQUEST], [PROBES], CONTEXTS)
    goal = [torch.randn(1, module.in_features, generator=torch.Generator().manual_seed(0))]
    rows, last = _encode(lm, positives)
    others = torch.cat(read_keys(lm, [module], None, rows, last).others[0])
    moved = {}
    for weight in (0.0, 1e4):
        cfg = REPConfig(steps=15, lr=1e-2, tau=0.5, anchor_weight=0.0, context_weight=weight, batch_size=4)
        (fit,) = fit_reference(lm, [module], goal, positives, anchors, cfg)
        with torch.no_grad():  # the soft gate, as trained (eval mode: no dropout)
            moved[weight] = float(fit.adaptor.branch(others, hard=False).norm())
        assert fit.info["context_gate_open_share"] is not None
    assert moved[1e4] < 0.5 * moved[0.0], moved
