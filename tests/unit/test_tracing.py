"""Causal tracing on tiny random models: the batched, prefix-cached trace equals the plain
reference (one full forward per restoration, as ROME's ``trace_with_patch``), states that are
exactly clean give back the clean probability, and results are seeded and written to disk."""

from __future__ import annotations

import json

import pytest
import tiny
import torch

from robustedit.analysis import (
    KINDS,
    TraceResult,
    clean_states,
    embedding_std,
    patched_probability,
    prepare,
    read_json,
    trace,
    write_trace,
)
from robustedit.analysis.corrupt import component_path
from robustedit.analysis.restore import CorruptedSuffix, restored_probs
from robustedit.analysis.tracing import layer_window
from robustedit.errors import UserError
from robustedit.models.load import wrap

PROMPT, SUBJECT = "The {} is located in", "Eiffel Tower"  # subject after one token
AT_START = ("{} plays the sport of", "Michael Jordan")  # subject at position 0: no prefix cache
MAIN_ARCHS = ("llama", "gpt2", "gpt_neox")
TOL = dict(rtol=1e-5, atol=1e-7)  # tiny random models give P(answer) ≈ 0.01


def close(a: float, b: float) -> bool:
    return abs(a - b) <= TOL["atol"] + TOL["rtol"] * abs(b)


@pytest.fixture(params=MAIN_ARCHS)
def main_lm(request, tiny_lm_factory):
    return tiny_lm_factory(request.param)


def test_every_architecture_has_mlp_and_attention_paths(tiny_lm):
    for kind in KINDS:
        for layer in range(tiny_lm.n_layers):
            tiny_lm.module(component_path(tiny_lm.spec, kind, layer))
    assert type(tiny_lm.module(component_path(tiny_lm.spec, "mlp", 0))).__name__.lower().endswith("mlp")
    assert "attention" in type(tiny_lm.module(component_path(tiny_lm.spec, "attn", 0))).__name__.lower()


@pytest.mark.parametrize(
    "arch, prompt",
    [(a, (PROMPT, SUBJECT)) for a in ("llama", "gpt2", "gptj", "gpt_neox", "gemma2")] + [("llama", AT_START)],
    ids=["llama", "gpt2", "gptj-tuple-layers", "gpt_neox", "gemma2-softcap", "llama-subject-first"],
)
def test_batched_trace_equals_the_plain_reference_in_every_cell(tiny_lm_factory, arch, prompt):
    lm = tiny_lm_factory(arch)
    windows = {"all": 1, "mlp": 2, "attn": 3}
    # max_rows 8 with 3 samples: two restorations per pass, so several chunks per token
    r = trace(lm, *prompt, samples=3, window=windows, max_rows=8)
    corr = prepare(lm, *prompt, samples=3)
    clean, clean_prob = clean_states(lm, corr, KINDS)
    assert close(r.corrupted_prob, patched_probability(lm, corr))
    assert not close(r.corrupted_prob, clean_prob)  # the noise does something
    for kind in KINDS:
        for layer in range(lm.n_layers):
            for pos in range(r.subject_range[0], len(r.tokens)):  # before: see the next tests
                states = [(kind, lay, pos) for lay in layer_window(layer, windows[kind], lm.n_layers)]
                want = patched_probability(lm, corr, states, clean)
                assert close(float(r.scores[kind][layer, pos]), want), (kind, layer, pos)


def test_restoring_the_last_state_gives_back_the_clean_probability(main_lm):
    r = trace(main_lm, PROMPT, SUBJECT, samples=4)
    assert r.scores["all"].shape == (main_lm.n_layers, len(r.tokens))
    assert close(float(r.scores["all"][-1, -1]), r.clean_prob)
    assert not close(r.corrupted_prob, r.clean_prob)
    # and the clean probability is the full causal-LM's own softmax
    ids = prepare(main_lm, PROMPT, SUBJECT, samples=1).ids(main_lm.device)
    logits = main_lm.model(input_ids=ids).logits[0, -1]
    assert close(r.clean_prob, float(torch.softmax(logits, -1)[r.answer_id]))


def test_restoring_a_layer_at_every_noisy_position_gives_back_the_clean_probability(main_lm):
    corr = prepare(main_lm, PROMPT, SUBJECT, samples=4)
    clean, clean_prob = clean_states(main_lm, corr, ["all"])
    s0, T = corr.subject_range[0], len(corr.token_ids)
    for layer in range(main_lm.n_layers):
        got = patched_probability(main_lm, corr, [("all", layer, p) for p in range(s0, T)], clean)
        assert close(got, clean_prob), layer
    # restoring only the subject's tokens is not enough below the last layer: attention has
    # already carried the noise to later tokens
    partial = patched_probability(main_lm, corr, [("all", 0, p) for p in range(*corr.subject_range)], clean)
    assert not close(partial, clean_prob)


@pytest.mark.parametrize("prompt", [(PROMPT, SUBJECT), AT_START], ids=["prefix", "at-start"])
def test_without_noise_every_score_is_the_clean_probability(main_lm, prompt):
    r = trace(main_lm, *prompt, samples=2, noise_factor=0.0)
    assert close(r.corrupted_prob, r.clean_prob)
    for kind in KINDS:
        torch.testing.assert_close(r.scores[kind], torch.full_like(r.scores[kind], r.clean_prob), **TOL)


def test_positions_before_the_subject_hold_the_corrupted_probability(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    r = trace(lm, PROMPT, SUBJECT, samples=3)
    s0 = r.subject_range[0]
    assert s0 == 1 and r.tokens[0] == "The"
    corr = prepare(lm, PROMPT, SUBJECT, samples=3)
    for kind in KINDS:
        assert torch.all(r.scores[kind][:, :s0] == r.corrupted_prob)
        # what the reference would compute there: restoring a state the noise never reached
        for layer in range(lm.n_layers):
            assert close(patched_probability(lm, corr, [(kind, layer, 0)]), r.corrupted_prob)


def test_trace_is_deterministic_under_the_seed_and_leaves_the_global_rng_alone(tiny_lm_factory):
    lm = tiny_lm_factory("gpt2")
    rng = torch.get_rng_state()
    a = trace(lm, PROMPT, SUBJECT, samples=3, seed=7)
    b = trace(lm, PROMPT, SUBJECT, samples=3, seed=7, max_rows=3)  # chunking changes nothing
    c = trace(lm, PROMPT, SUBJECT, samples=3, seed=8)
    assert torch.equal(torch.get_rng_state(), rng)
    assert a.corrupted_prob == b.corrupted_prob
    for kind in KINDS:
        torch.testing.assert_close(a.scores[kind], b.scores[kind], rtol=1e-6, atol=1e-9)
    assert a.corrupted_prob != c.corrupted_prob


def test_answer_defaults_to_the_clean_top1_and_accepts_text_or_id(tiny_lm_factory, tokenizer):
    lm = tiny_lm_factory("llama")
    corr = prepare(lm, PROMPT, SUBJECT, samples=1)
    ids = corr.ids(lm.device)
    top1 = int(lm.model(input_ids=ids).logits[0, -1].argmax())
    assert corr.answer_id == top1
    assert prepare(lm, PROMPT, SUBJECT, answer=" Paris").answer_id == tokenizer(" Paris")["input_ids"][0]
    assert prepare(lm, PROMPT, SUBJECT, answer=42).answer_id == 42
    r = trace(lm, PROMPT, SUBJECT, answer=42, kinds=["mlp"], samples=2)
    assert list(r.scores) == ["mlp"] and r.answer_id == 42 and r.windows == {"mlp": 10}


def test_noise_scale_is_noise_factor_times_the_embedding_std(tiny_lm_factory):
    lm = tiny_lm_factory("gpt_neox")
    std = embedding_std(lm)
    assert std > 0 and embedding_std(lm, [SUBJECT]) > 0
    corr = prepare(lm, PROMPT, SUBJECT, samples=200, noise_factor=3.0)
    assert corr.noise_std == pytest.approx(std)
    assert corr.noise.shape == (200, corr.subject_range[1] - corr.subject_range[0], lm.d_model)
    assert float(corr.noise.std()) == pytest.approx(3 * std, rel=0.05)
    assert float(prepare(lm, PROMPT, SUBJECT, noise_std=0.5, noise_factor=2.0).noise.std()) == pytest.approx(1.0, rel=0.1)


def test_bad_arguments_are_user_errors(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    with pytest.raises(UserError, match="kind"):
        trace(lm, PROMPT, SUBJECT, kinds=["mlp_out"])
    with pytest.raises(UserError, match="kind"):
        trace(lm, PROMPT, SUBJECT, kinds=[])
    with pytest.raises(UserError, match="window"):
        trace(lm, PROMPT, SUBJECT, window=0)
    with pytest.raises(UserError, match="samples"):
        prepare(lm, PROMPT, SUBJECT, samples=0)
    with pytest.raises(UserError):
        prepare(lm, "no placeholder", SUBJECT)


def test_json_and_png_are_written_and_read_back(tiny_lm_factory, tmp_path):
    lm = tiny_lm_factory("llama")
    r = trace(lm, PROMPT, SUBJECT, samples=2)
    paths = write_trace(r, tmp_path / "out", stem="eiffel")
    assert sorted(p.name for p in paths) == ["eiffel.json", "eiffel_all.png", "eiffel_attn.png", "eiffel_mlp.png"]
    for p in paths[1:]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    raw = json.loads((tmp_path / "out" / "eiffel.json").read_text())
    assert raw["subject_range"] == list(r.subject_range)
    assert len(raw["scores"]["mlp"]) == lm.n_layers and len(raw["scores"]["mlp"][0]) == len(r.tokens)
    back = read_json(paths[0])
    assert isinstance(back, TraceResult) and back.tokens == r.tokens and back.windows == r.windows
    for kind in KINDS:
        torch.testing.assert_close(back.scores[kind], r.scores[kind])
    assert not list((tmp_path / "out").glob("*.tmp*"))


def test_clean_probability_includes_logit_softcapping(tiny_lm_factory):
    """The tracer applies the head (and Gemma 2's logit softcapping) itself, to the last position."""
    lm = tiny_lm_factory("gemma2")
    corr = prepare(lm, PROMPT, SUBJECT, samples=1)
    _, clean_prob = clean_states(lm, corr, ["all"])
    full = torch.softmax(lm.model(input_ids=corr.ids(lm.device)).logits[0, -1], -1)[corr.answer_id]
    assert close(clean_prob, float(full))


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt_neox"])
def sdpa_lm(request, tokenizer):
    """The tiny model with PyTorch's scaled-dot-product attention, the default of ``load_model``
    (its masks and the one-row layer arguments broadcast differently from eager attention)."""
    from transformers import AutoModelForCausalLM

    cfg = tiny.tiny_config(request.param, len(tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    return wrap(model, tokenizer, f"tiny-{request.param}-sdpa")


@pytest.mark.parametrize("prompt", [(PROMPT, SUBJECT), AT_START], ids=["prefix", "at-start"])
def test_batched_trace_equals_the_plain_reference_with_sdpa_attention(sdpa_lm, prompt):
    r = trace(sdpa_lm, *prompt, samples=2, window=2, max_rows=6)
    corr = prepare(sdpa_lm, *prompt, samples=2)
    clean, _ = clean_states(sdpa_lm, corr, KINDS)
    n = sdpa_lm.n_layers
    for kind in KINDS:
        for layer in range(n):
            for pos in range(r.subject_range[0], len(r.tokens)):
                states = [(kind, lay, pos) for lay in layer_window(layer, 2, n)]
                assert close(float(r.scores[kind][layer, pos]), patched_probability(sdpa_lm, corr, states, clean))


def test_rows_skip_the_layers_below_their_restoration(tiny_lm_factory):
    """Restoring the residual stream after layer L runs layers L+1.. only: layer l sees the rows
    of the l restorations below it (layer 0 none), and only the tokens from the restored one on."""
    lm = tiny_lm_factory("llama")
    S = 3
    corr = prepare(lm, PROMPT, SUBJECT, samples=S)
    clean, _ = clean_states(lm, corr, ["all"])
    t = corr.subject_range[1]
    run = CorruptedSuffix.build(lm, corr, t)
    shapes: dict[int, tuple] = {}

    def count(i):
        def pre(_mod, args):
            shapes[i] = tuple(args[0].shape[:2])

        return pre

    handles = [lm.layer(i).register_forward_pre_hook(count(i)) for i in range(lm.n_layers)]
    try:
        restored_probs(lm, corr, clean, run, [("all", range(L, L + 1)) for L in range(lm.n_layers)])
    finally:
        for h in handles:
            h.remove()
    T = len(corr.token_ids)
    assert shapes == {i: (S * i, T - t) for i in range(1, lm.n_layers)}
