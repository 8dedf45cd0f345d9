"""MEMIT on tiny random models: the editor contract (compute, don't mutate; every target rises;
rollback is bit-exact), the value site ``layer_out`` through the prefix-cached forward, MEMIT's
closed form and its agreement with ROME for one request at one layer."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import same_state, state_copy

import robustedit.editors.memit  # noqa: F401  (registers "memit")
from robustedit.editors import EDITORS, applied, apply_delta, get_editor
from robustedit.editors.keys import group_mean, subject_keys
from robustedit.editors.memit import MEMIT, MEMITConfig, memit_update
from robustedit.editors.rome import rank_one_update
from robustedit.editors.values import (
    ValueConfig,
    optimize_value,
    optimize_values,
    site_module,
    subject_values,
)
from robustedit.errors import UserError
from robustedit.models.hooks import hidden_of, hooked, with_hidden
from robustedit.models.text import encode, fill, subject_last_index, target_ids
from robustedit.request import EditRequest
from robustedit.stats import covariance as cov

LAYERS = (0, 1)
# λ = 10: the reference's 15000 is for GPT-J's MLP width 16384; kᵀC⁻¹k ≈ d_in = 64 here.
CONFIG = {
    "layers": list(LAYERS),
    "stats": {"n_tokens": 2048, "seq_len": 64, "batch_size": 8},
    "context_template_length_params": [[3, 5]],
    "v_num_grad_steps": 10,
    "mom2_update_weight": 10.0,
}
# Subjects end the prompts (see test_rome.py: δ at the subject then reaches the next token directly).
REQUESTS = [
    EditRequest("The mother tongue of {}", "Danielle Darrieux", "English", "French"),
    EditRequest("The sport played by {}", "Michael Jordan", "tennis", "basketball"),
    EditRequest("The city of {}", "the Eiffel Tower", "Rome", "Paris"),
]
# gptj's decoder layers return a tuple, the others a tensor.
ARCHS = ("llama", "gpt2", "gpt_neox", "gemma2", "gptj")
# Architectures whose MLP output enters the residual stream as is; Gemma 2 normalises it first
# (post_feedforward_layernorm), so a linear change of W_out moves h_L only approximately linearly.
ADDITIVE = ("llama", "gpt2", "gpt_neox", "gptj")


class Run:
    """One ``edit`` of a batch on a tiny model, with the state around it."""

    def __init__(self, lm, overrides: dict, requests: list[EditRequest]) -> None:
        self.lm = lm
        self.requests = requests
        self.editor = get_editor("memit", lm, **overrides)
        self.before = state_copy(lm)
        self.delta = self.editor.edit(requests)
        self.changed_by_edit = same_state(lm, self.before)

    @property
    def names(self) -> list[str]:
        return [self.lm.down_proj_weight_name(layer) for layer in self.editor.config.layers]


@pytest.fixture(scope="module")
def runs() -> dict:
    return {}


@pytest.fixture(params=ARCHS)
def memit_arch(request) -> str:
    return request.param


@pytest.fixture
def run(memit_arch, tiny_lm_factory, runs) -> Run:
    """The module's edit of REQUESTS on ``memit_arch`` (computed once, shared by the tests below)."""
    if memit_arch not in runs:
        runs[memit_arch] = Run(tiny_lm_factory(memit_arch), CONFIG, REQUESTS)
    return runs[memit_arch]


def target_logprob(lm, request: EditRequest) -> float:
    """log P(" " + target_new | prompt) under a plain full forward pass."""
    text = request.text
    prompt = encode(lm.tokenizer, text)
    target = target_ids(lm.tokenizer, text, request.target_new)
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=torch.tensor([prompt + target])).logits[0].double(), dim=-1)
    return sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(target))


# --- the contract -------------------------------------------------------------------------------


def test_memit_is_registered():
    assert EDITORS.get("memit") is MEMIT


def test_delta_touches_exactly_the_down_proj_of_the_edited_layers(run):
    assert sorted(run.delta.weights) == sorted(run.names)
    params = dict(run.lm.model.named_parameters())
    for name in run.names:
        d, W = run.delta.weights[name], params[name]
        assert d.shape == W.shape and d.dtype == W.dtype
        assert torch.isfinite(d).all() and d.abs().max() > 0
    info = run.delta.info
    assert info["editor"] == "memit" and info["layers"] == list(LAYERS) and info["z_layer"] == LAYERS[-1]
    assert len(info["requests"]) == len(REQUESTS) and len(info["z_error"]) == len(LAYERS)
    json.dumps(info)  # the runner writes it to JSON


def test_edit_computes_and_does_not_mutate(run):
    assert run.changed_by_edit == []


def test_applied_and_restore_are_bit_exact(run):
    with applied(run.lm, run.delta):
        assert sorted(same_state(run.lm, run.before)) == sorted(run.names)
    assert same_state(run.lm, run.before) == []

    backup = apply_delta(run.lm, run.delta)
    assert same_state(run.lm, run.before) != []
    backup.restore()
    assert same_state(run.lm, run.before) == []


def test_every_target_in_the_batch_rises(run):
    before = [target_logprob(run.lm, r) for r in REQUESTS]
    with applied(run.lm, run.delta):
        after = [target_logprob(run.lm, r) for r in REQUESTS]
    assert all(a > b + 0.1 for a, b in zip(after, before)), (before, after)


# --- MEMIT's algebra ----------------------------------------------------------------------------


def test_last_layer_output_moves_to_z(run, memit_arch):
    """Applied, h_L at each subject approaches z (only approximately: λC pulls the other way, the
    keys are context averages, and the bare prompt is one of the contexts)."""
    Z, _ = run.editor.target_values(REQUESTS)  # deterministic: the same z the edit used
    before = run.editor.current_hidden(REQUESTS)
    with applied(run.lm, run.delta):
        after = run.editor.current_hidden(REQUESTS)
    ratio = (Z - after).norm(dim=1) / (Z - before).norm(dim=1)
    bound = 0.3 if memit_arch in ADDITIVE else 0.8
    assert (ratio < bound).all(), ratio


@pytest.mark.parametrize("arch_", ADDITIVE)
def test_small_weight_and_bare_prompts_reach_z_exactly(arch_, tiny_lm_factory):
    """With λ → 0 and keys of the bare prompt only, the last layer's update solves K ΔW = R
    exactly, so h_L = z at every subject (up to float32)."""
    lm = tiny_lm_factory(arch_)
    run = Run(lm, {**CONFIG, "context_template_length_params": [], "mom2_update_weight": 1e-4}, REQUESTS)
    Z, _ = run.editor.target_values(REQUESTS)
    with applied(lm, run.delta):
        after = run.editor.current_hidden(REQUESTS)
    assert ((Z - after).norm(dim=1) <= 1e-4 * Z.norm(dim=1)).all(), (Z - after).norm(dim=1)


def test_memit_update_solves_the_regularised_least_squares():
    g = torch.Generator().manual_seed(0)
    d_in, d_out, n, lam = 12, 7, 3, 2.5
    A = torch.randn(d_in, 3 * d_in, generator=g, dtype=torch.float64)
    C = A @ A.T / (3 * d_in)  # symmetric positive definite
    K = torch.randn(d_in, n, generator=g, dtype=torch.float64)
    R = torch.randn(d_out, n, generator=g, dtype=torch.float64)
    upd = memit_update(K.float(), R.float(), C.float(), lam)
    assert upd.shape == (d_out, d_in) and upd.dtype == torch.float64

    exact = memit_update(K, R, C, lam)
    # normal equations of min ‖ΔW K − R‖² + λ tr(ΔW C ΔWᵀ):  ΔW (K Kᵀ + λC) = R Kᵀ
    torch.testing.assert_close(exact @ (K @ K.T + lam * C), R @ K.T, atol=1e-10, rtol=0)
    # the same problem as ordinary least squares: ΔW [K, √λ L] ≈ [R, 0] with C = L Lᵀ
    L = torch.linalg.cholesky(C)
    X = torch.cat([K, lam**0.5 * L], dim=1)  # (d_in, n + d_in)
    Y = torch.cat([R, torch.zeros(d_out, d_in, dtype=torch.float64)], dim=1)
    lstsq = torch.linalg.lstsq(X.T, Y.T).solution.T  # (d_out, d_in)
    torch.testing.assert_close(exact, lstsq, atol=1e-10, rtol=0)
    # λ → 0 with n ≤ d_in: the constraint ΔW K = R holds
    torch.testing.assert_close(memit_update(K, R, C, 1e-9) @ K, R, atol=1e-6, rtol=0)


def test_edit_memory_makes_sequential_updates_equal_one_joint_update():
    """Recursive least squares: editing facts 1..3 one call at a time, each update with the keys of
    the earlier calls in the preserved term, ends at the one-call solution of all of them (one
    linear layer, fixed keys, targets V)."""
    g = torch.Generator().manual_seed(2)
    d_in, d_out, lam = 10, 6, 3.0
    A = torch.randn(d_in, 3 * d_in, generator=g, dtype=torch.float64)
    C = A @ A.T / (3 * d_in)
    W0 = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    Ks = [torch.randn(d_in, n, generator=g, dtype=torch.float64) for n in (2, 3, 1)]
    Vs = [torch.randn(d_out, K.shape[1], generator=g, dtype=torch.float64) for K in Ks]

    W, memory = W0.clone(), None
    for K, V in zip(Ks, Vs):
        W = W + memit_update(K, V - W @ K, C, lam, memory)
        memory = K @ K.T if memory is None else memory + K @ K.T
    K_all, V_all = torch.cat(Ks, dim=1), torch.cat(Vs, dim=1)
    joint = W0 + memit_update(K_all, V_all - W0 @ K_all, C, lam)
    torch.testing.assert_close(W, joint, atol=1e-10, rtol=0)

    forgetful = W0.clone()  # plain MEMIT: the same calls without the memory end elsewhere
    for K, V in zip(Ks, Vs):
        forgetful = forgetful + memit_update(K, V - forgetful @ K, C, lam)
    assert float((forgetful - joint).norm()) > 1e-3


def test_one_request_one_layer_is_roms_rank_one_update():
    """For n = 1, ΔW = r (C⁻¹k)ᵀ / (λ + kᵀC⁻¹k) (Sherman–Morrison): ROME's update for the same key
    and residual r = v* − W k, shrunk by (kᵀC⁻¹k)/(λ + kᵀC⁻¹k)."""
    g = torch.Generator().manual_seed(1)
    d_in, d_out, lam = 16, 9, 4.0
    A = torch.randn(d_in, 3 * d_in, generator=g, dtype=torch.float64)
    C = A @ A.T / (3 * d_in)
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    k, r = torch.randn(d_in, generator=g, dtype=torch.float64), torch.randn(d_out, generator=g, dtype=torch.float64)

    memit = memit_update(k[:, None], r[:, None], C, lam)
    Lam, u = rank_one_update(lambda x: W @ x, C, k, k, W @ k + r)
    rome = torch.outer(Lam, u)
    cos = torch.nn.functional.cosine_similarity(memit.flatten(), rome.flatten(), dim=0)
    assert float(cos) > 1 - 1e-10
    q = float(k @ torch.linalg.solve(C, k))
    torch.testing.assert_close(memit, rome * q / (lam + q), atol=1e-10, rtol=0)


@pytest.mark.parametrize("arch_", ("llama", "gpt2", "gpt_neox", "gemma2"))
def test_one_request_one_layer_agrees_with_rome(arch_, tiny_lm_factory):
    """The editors end to end on one request at layer 1, given the same templates (the bare prompt)
    and the same unclamped, undecayed value optimisation: where the MLP output enters the residual
    unnormalised, δ at mlp_out and at layer_out is the same optimisation, so the updates are parallel."""
    lm = tiny_lm_factory(arch_)
    same = {"stats": CONFIG["stats"], "v_num_grad_steps": 10, "context_template_length_params": [],
            "clamp_norm_factor": 100.0, "v_weight_decay": 0.0}
    rome = get_editor("rome", lm, **{**same, "layer": 1, "update_key": "prompt"}).edit(REQUESTS[:1])
    memit = get_editor("memit", lm, **{**same, "layers": [1]}).edit(REQUESTS[:1])
    name = lm.down_proj_weight_name(1)
    assert list(memit.weights) == [name]
    a, b = rome.weights[name].flatten().double(), memit.weights[name].flatten().double()
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.9


def test_group_mean_weighs_each_group_equally():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.0, 5.0]])
    torch.testing.assert_close(group_mean(keys, [1, 3]), torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(group_mean(keys, [4]), keys.mean(0))
    with pytest.raises(ValueError):
        group_mean(keys, [1, 2])


# --- the value site -----------------------------------------------------------------------------


def full_forward_nll(lm, layer: int, site: str, request: EditRequest, templates: list[str], delta: torch.Tensor) -> float:
    """ROME's NLL term recomputed with plain full forward passes, δ added by a hook at ``site``."""
    tok, total = lm.tokenizer, 0.0
    for template in templates:
        text, start, end = fill(template, request.subject)
        ids, last = encode(tok, text), subject_last_index(tok, text, start, end)
        target = target_ids(tok, text, request.target_new)

        def add(_mod, _args, out, last=last):
            h = hidden_of(out).clone()
            h[0, last] += delta.to(h.dtype)
            return with_hidden(out, h)

        with torch.no_grad(), hooked(site_module(lm, layer, site), post=add):
            logits = lm.model(input_ids=torch.tensor([ids + target[:-1]])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        total -= sum(float(logp[len(ids) - 1 + j, t]) for j, t in enumerate(target)) / len(target)
    return total / len(templates)


@pytest.mark.parametrize("site", ["mlp_out", "layer_out"])
def test_value_site_through_the_prefix_cache_equals_a_full_forward(tiny_lm, arch, site):
    """v₀ is the site's value at the subject and the optimised loss is the loss of a plain forward
    pass with δ added at the site, on every architecture of the table."""
    request = REQUESTS[0]
    templates = [c.format(request.prompt) for c in ("{}", "Because of this. {}")]
    cfg = ValueConfig(num_steps=3, kl_factor=0.0, weight_decay=0.0, site=site)  # loss = NLL
    result = optimize_value(tiny_lm, 1, request, templates, cfg)
    v0 = subject_values(tiny_lm, 1, site, templates[:1], request.subject)[0]
    torch.testing.assert_close(result.target_init, v0, atol=1e-5, rtol=1e-4)
    assert result.delta.abs().max() > 0
    nll = full_forward_nll(tiny_lm, 1, site, request, templates, result.delta)
    assert abs(result.losses[-1] - nll) <= 1e-4 * max(1.0, abs(nll)), (result.losses[-1], nll)


@pytest.mark.parametrize("site", ["mlp_out", "layer_out"])
def test_values_optimised_in_one_batch_equal_one_at_a_time(tiny_lm, site):
    """Batching requests only shares the forward pass: each δ, its loss history and its early stop
    are what that request gets alone."""
    templates_of = [[c.format(r.prompt) for c in ("{}", "Because of this. {}", "A b c d e. {}")] for r in REQUESTS]
    probe = [optimize_value(tiny_lm, 1, r, t, ValueConfig(num_steps=6, site=site, early_stop_loss=0.0))
             for r, t in zip(REQUESTS, templates_of)]
    # A threshold the fastest request crosses by step 2: requests then stop at different steps.
    cfg = ValueConfig(num_steps=6, site=site, early_stop_loss=min(p.losses[2] for p in probe) + 1e-3)
    alone = [optimize_value(tiny_lm, 1, r, t, cfg) for r, t in zip(REQUESTS, templates_of)]
    together = optimize_values(tiny_lm, 1, REQUESTS, templates_of, cfg, batch_size=len(REQUESTS))
    assert len({a.steps for a in alone}) > 1
    for a, b in zip(alone, together):
        assert a.steps == b.steps
        torch.testing.assert_close(b.target_init, a.target_init, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(b.delta, a.delta, atol=1e-4, rtol=1e-3)
        assert b.losses == pytest.approx(a.losses, rel=1e-4, abs=1e-5)


def test_keys_of_a_batch_of_requests_equal_each_request_alone(tiny_lm):
    """MEMIT reads the keys of all requests in shared padded batches; each equals its own pass."""
    editor = get_editor("memit", tiny_lm, **CONFIG)
    K = editor.layer_keys(1, REQUESTS)
    sizes = [len(g) for g in editor.context_groups()]
    for i, r in enumerate(REQUESTS):
        alone = subject_keys(tiny_lm, 1, [c.format(r.prompt) for c in editor.context_templates()], r.subject)
        torch.testing.assert_close(K[:, i], group_mean(alone, sizes), atol=1e-5, rtol=1e-4)
    H = editor.current_hidden(REQUESTS)
    for i, r in enumerate(REQUESTS):
        torch.testing.assert_close(H[i], subject_values(tiny_lm, editor.z_layer, "layer_out", [r.prompt], r.subject)[0],
                                   atol=1e-5, rtol=1e-4)


def test_unknown_value_site_is_rejected():
    with pytest.raises(ValueError, match="site"):
        ValueConfig(site="attn_out")


# --- configuration, statistics, bad input -------------------------------------------------------


def test_covariances_of_all_layers_come_from_one_pass(tiny_lm_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTEDIT_CACHE", str(tmp_path))  # an empty cache: nothing read from earlier tests
    calls = []
    real = cov.compute_second_moments
    monkeypatch.setattr(cov, "compute_second_moments",
                        lambda lm_, layers, *a, **k: calls.append(list(layers)) or real(lm_, layers, *a, **k))
    editor = get_editor("memit", tiny_lm_factory("llama"), **{**CONFIG, "layers": [0, 1, 2]})
    C = editor.covariances()
    assert calls == [[0, 1, 2]] and sorted(C) == [0, 1, 2]
    editor.covariances()
    assert len(calls) == 1  # kept by the editor


def test_config_from_yaml_style_values():
    cfg = MEMITConfig(layers=[3, 5])
    assert cfg.layers == (3, 5) and cfg.value.site == "layer_out"
    defaults = MEMITConfig()
    assert defaults.context_template_length_params == ((10, 5),) and defaults.mom2_update_weight == 15000.0


@pytest.mark.parametrize("layers, match", [([], "at least one layer"), ([1, 99], "out of range"), ([-1], "out of range"),
                                           ([1, 0], "strictly increasing"), ([1, 1], "strictly increasing")])
def test_bad_layers_are_user_errors(tiny_lm_factory, layers, match):
    with pytest.raises(UserError, match=match):
        get_editor("memit", tiny_lm_factory("llama"), **{**CONFIG, "layers": layers})


def test_bad_values_are_user_errors(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    with pytest.raises(UserError, match="mom2_update_weight"):
        get_editor("memit", lm, **{**CONFIG, "mom2_update_weight": 0})
    with pytest.raises(UserError, match="(?i)did you mean 'layers'"):
        get_editor("memit", lm, **{**CONFIG, "layer": 1})


def test_no_requests_is_an_error(tiny_lm_factory):
    editor = get_editor("memit", tiny_lm_factory("llama"), **CONFIG)
    with pytest.raises(ValueError):
        editor.edit([])
