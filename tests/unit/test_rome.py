"""ROME on a tiny random model of every architecture: the contract every editor keeps (compute,
don't mutate; the target rises; rollback is bit-exact) and ROME's own algebra (Ŵ k* = v*)."""

from __future__ import annotations

import pytest
import torch
from tiny import same_state, state_copy

import robustedit.editors.rome  # noqa: F401  (registers "rome")
from robustedit.editors import EDITORS, applied, apply_delta, get_editor
from robustedit.editors.keys import subject_keys
from robustedit.editors.rome import ROME, rank_one_update
from robustedit.editors.values import optimize_value
from robustedit.errors import UserError
from robustedit.models.text import encode, target_ids
from robustedit.request import EditRequest

LAYER = 1
CONFIG = {
    "layer": LAYER,
    "stats": {"n_tokens": 2048, "seq_len": 64, "batch_size": 8},
    "context_template_length_params": [[3, 5]],
    "v_num_grad_steps": 10,
}
# The subject ends each prompt: in a random model attention is diffuse, so δ at the subject reaches
# later positions only faintly, and the probability change would be noise-sized.
REQUEST = EditRequest("The mother tongue of {}", "Danielle Darrieux", "English", "French")
OTHER = EditRequest("The sport played by {}", "Michael Jordan", "tennis", "basketball")


class Run:
    """One ``edit`` on a tiny model, with the state around it."""

    def __init__(self, lm, overrides: dict, requests: list[EditRequest]) -> None:
        self.lm = lm
        self.editor = get_editor("rome", lm, **overrides)
        self.before = state_copy(lm)
        self.delta = self.editor.edit(requests)
        self.changed_by_edit = same_state(lm, self.before)


@pytest.fixture(scope="module")
def runs() -> dict:
    return {}


@pytest.fixture
def run(tiny_lm, arch, runs) -> Run:
    """The module's edit of REQUEST on ``arch`` (computed once, shared by the tests below)."""
    if arch not in runs:
        runs[arch] = Run(tiny_lm, CONFIG, [REQUEST])
    return runs[arch]


def target_logprob(lm, request: EditRequest) -> float:
    """log P(" " + target_new | prompt) under a plain full forward pass."""
    text = request.text
    prompt = encode(lm.tokenizer, text)
    target = target_ids(lm.tokenizer, text, request.target_new)
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(target))


def averaged_key(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """(k* (d_in,), keys (N, d_in)) recomputed over the editor's context templates."""
    templates = [c.format(REQUEST.prompt) for c in run.editor.context_templates()]
    keys = subject_keys(run.lm, LAYER, templates, REQUEST.subject)
    return keys.mean(0), keys


def value_target(run: Run) -> torch.Tensor:
    """v* for REQUEST, recomputed on the unedited model (the optimisation is deterministic)."""
    templates = [c.format(REQUEST.prompt) for c in run.editor.context_templates()]
    return optimize_value(run.lm, LAYER, REQUEST, templates, run.editor.config.value).target


# --- the contract -------------------------------------------------------------------------------


def test_rome_is_registered():
    assert EDITORS.get("rome") is ROME


def test_delta_touches_exactly_the_down_proj_of_the_layer(run):
    name = run.lm.down_proj_weight_name(LAYER)
    assert list(run.delta.weights) == [name]
    d, W = run.delta.weights[name], run.lm.down_proj(LAYER).weight
    assert d.shape == W.shape and d.dtype == W.dtype
    assert torch.isfinite(d).all() and d.abs().max() > 0
    assert run.delta.info["editor"] == "rome" and run.delta.info["layer"] == LAYER


def test_edit_computes_and_does_not_mutate(run):
    assert run.changed_by_edit == []


def test_target_probability_rises(run):
    before = target_logprob(run.lm, REQUEST)
    with applied(run.lm, run.delta):
        after = target_logprob(run.lm, REQUEST)
    assert after > before + 0.1, (before, after)


def test_applied_and_restore_are_bit_exact(run):
    with applied(run.lm, run.delta):
        assert same_state(run.lm, run.before) == [run.lm.down_proj_weight_name(LAYER)]
    assert same_state(run.lm, run.before) == []

    backup = apply_delta(run.lm, run.delta)
    assert same_state(run.lm, run.before) != []
    backup.restore()
    assert same_state(run.lm, run.before) == []


def test_applied_restores_after_an_exception(run):
    with pytest.raises(RuntimeError, match="boom"):
        with applied(run.lm, run.delta):
            raise RuntimeError("boom")
    assert same_state(run.lm, run.before) == []


# --- ROME's algebra -----------------------------------------------------------------------------


def test_edited_layer_maps_the_averaged_key_to_the_target_value(run):
    k_star, _ = averaged_key(run)
    v_star = value_target(run)
    module = run.lm.down_proj(LAYER)
    with torch.no_grad():
        before = module(k_star[None])[0]
        with applied(run.lm, run.delta):
            after = module(k_star[None])[0]
            k_again, _ = averaged_key(run)  # the edit cannot change its own layer's keys
    torch.testing.assert_close(k_again, k_star, atol=0, rtol=0)
    scale = float(v_star.norm())
    assert float((after - v_star).norm()) <= 1e-4 * scale, "Ŵ k* != v*"
    assert float((before - v_star).norm()) > 1e-2 * scale  # the update did something


def test_update_is_rank_one_along_inverse_covariance_times_key(run):
    k_star, _ = averaged_key(run)
    C = run.editor.covariance()  # (d_in, d_in), read from the session cache
    u = torch.linalg.solve(C.double(), k_star.double())
    u = u / u.norm()
    dW = run.delta.weights[run.lm.down_proj_weight_name(LAYER)].double()
    if run.lm.spec.weight_is_in_out:  # Conv1D stores (d_in, d_out)
        dW = dW.T
    lam = dW @ u  # (d_out,)
    torch.testing.assert_close(dW, torch.outer(lam, u), atol=1e-6 * float(dW.abs().max()), rtol=1e-4)


def test_update_key_prompt_maps_the_bare_prompt_key(tiny_lm, arch):
    run = Run(tiny_lm, {**CONFIG, "update_key": "prompt"}, [REQUEST])
    assert run.changed_by_edit == []
    _, keys = averaged_key(run)
    k_prompt = keys[0]  # contexts[0] is the bare "{}"
    v_star = value_target(run)
    module = tiny_lm.down_proj(LAYER)
    with torch.no_grad(), applied(tiny_lm, run.delta):
        after = module(k_prompt[None])[0]
    assert float((after - v_star).norm()) <= 1e-4 * float(v_star.norm())


def test_rank_one_update_solves_the_constraint_in_float64():
    g = torch.Generator().manual_seed(0)
    d_in, d_out = 12, 7
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    b = torch.randn(d_out, generator=g, dtype=torch.float64)
    A = torch.randn(d_in, 3 * d_in, generator=g, dtype=torch.float64)
    C = A @ A.T / (3 * d_in)  # symmetric positive definite
    k_star, k_other, v = (torch.randn(n, generator=g, dtype=torch.float64) for n in (d_in, d_in, d_out))

    def W_apply(k):
        return W @ k + b

    for k_update in (k_star, k_other):
        lam, u = rank_one_update(W_apply, C, k_star, k_update, v)
        assert lam.shape == (d_out,) and u.shape == (d_in,)
        torch.testing.assert_close((W + torch.outer(lam, u)) @ k_update + b, v, atol=1e-6, rtol=0)
        direction = torch.linalg.solve(C, k_star)
        torch.testing.assert_close(u, direction / direction.norm(), atol=1e-10, rtol=0)
    # mom2_adjustment=False (C = I): u is k* itself, the constraint still holds
    lam, u = rank_one_update(W_apply, None, k_star, k_star, v)
    torch.testing.assert_close(u, k_star / k_star.norm(), atol=1e-12, rtol=0)
    torch.testing.assert_close((W + torch.outer(lam, u)) @ k_star + b, v, atol=1e-6, rtol=0)


# --- several requests, bad input ----------------------------------------------------------------


def test_two_requests_sum_their_deltas_and_leave_the_model_unchanged(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    run = Run(lm, CONFIG, [REQUEST, OTHER])
    assert run.changed_by_edit == []
    assert list(run.delta.weights) == [lm.down_proj_weight_name(LAYER)]
    assert len(run.delta.info["requests"]) == 2
    before = [target_logprob(lm, r) for r in (REQUEST, OTHER)]
    with applied(lm, run.delta):
        after = [target_logprob(lm, r) for r in (REQUEST, OTHER)]
    assert after[0] > before[0] and after[1] > before[1], (before, after)
    assert same_state(lm, run.before) == []


def test_layer_out_of_range_is_a_user_error(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    with pytest.raises(UserError, match="out of range"):
        get_editor("rome", lm, **{**CONFIG, "layer": 99})


def test_unknown_config_key_suggests_the_right_one(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    with pytest.raises(UserError, match="(?i)did you mean 'v_lr'"):
        get_editor("rome", lm, **{**CONFIG, "v_lrr": 0.1})
    with pytest.raises(UserError, match="(?i)did you mean 'n_tokens'"):
        get_editor("rome", lm, **{**CONFIG, "stats": {"n_token": 4096}})


def test_invalid_config_values_are_user_errors(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    with pytest.raises(UserError, match="update_key"):
        get_editor("rome", lm, **{**CONFIG, "update_key": "mean"})
    with pytest.raises(UserError, match="(?i)did you mean 'enwiki-sample'"):
        get_editor("rome", lm, **{**CONFIG, "stats": {"corpus": "enwiki-sampel"}})


def test_no_requests_is_an_error(tiny_lm_factory):
    editor = get_editor("rome", tiny_lm_factory("llama"), **CONFIG)
    with pytest.raises(ValueError):
        editor.edit([])


def test_rome_records_whether_its_value_optimisation_converged(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    c = get_editor("rome", lm, **CONFIG).edit([REQUEST]).info["convergence"]
    assert set(c) == {"final_loss", "target_prob", "converged"}
    assert 0.0 <= c["target_prob"] <= 1.0 and c["converged"] == (c["target_prob"] >= 0.5)
