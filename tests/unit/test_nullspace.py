"""AlphaEdit's null-space-constrained update (editors/nullspace.py) on its own and as the
``nullspace`` option of ROME and MEMIT on tiny random models: the projector, the solve against the
reference formula, ΔW = ΔW P, the memory of committed edits, the option off changing nothing."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import same_state, state_copy

import robustedit.editors  # noqa: F401  (registers "rome" and "memit")
from robustedit.editors import Delta, applied, get_editor
from robustedit.editors.nullspace import (
    NullspaceConfig,
    alphaedit_update,
    null_space_basis,
    projector,
)
from robustedit.errors import UserError
from robustedit.request import EditRequest

STATS = {"n_tokens": 2048, "seq_len": 64, "batch_size": 8}
ROME_CONFIG = {"layer": 1, "stats": STATS, "context_template_length_params": [[3, 5]], "v_num_grad_steps": 10}
# λ = 10 for tiny models: see test_memit.py.
MEMIT_CONFIG = {"layers": [0, 1], "stats": STATS, "context_template_length_params": [[3, 5]], "v_num_grad_steps": 10,
                "mom2_update_weight": 10.0}
# Tiny keys have ‖k‖² ≈ 0.6–5 (SmolLM2's ≈ 20–100), so the ridge is scaled down with them.
ON = {"enabled": True, "l2": 1e-3}
REQUESTS = [
    EditRequest("The mother tongue of {}", "Danielle Darrieux", "English", "French"),
    EditRequest("The sport played by {}", "Michael Jordan", "tennis", "basketball"),
]


def spd_with_spectrum(evals: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """C = Q diag(evals) Qᵀ with a random orthogonal Q; returns (C, Q)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(evals), len(evals), generator=g, dtype=torch.float64))
    return Q @ torch.diag(torch.tensor(evals, dtype=torch.float64)) @ Q.T, Q


def out_in(lm, dW: torch.Tensor) -> torch.Tensor:
    """A delta of a down-projection as (d_out, d_in) float64 (Conv1D stores (d_in, d_out))."""
    return (dW.T if lm.spec.weight_is_in_out else dW).double()


def target_logprob(lm, request: EditRequest) -> float:
    from robustedit.models.text import encode, target_ids

    prompt = encode(lm.tokenizer, request.text)
    target = target_ids(lm.tokenizer, request.text, request.target_new)
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=torch.tensor([prompt + target])).logits[0].double(), dim=-1)
    return sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(target))


# --- the projector ------------------------------------------------------------------------------

EVALS = [1e-4, 2e-4, 5e-4, 1e-3, 0.5, 1.0, 2.0, 4.0]  # four "null" directions, four used ones


@pytest.mark.parametrize("threshold, kind", [(0.01, "absolute"), (0.01, "relative"), (0.01, "energy")])
def test_projector_is_symmetric_idempotent_and_kills_the_large_eigenvalues(threshold, kind):
    C, Q = spd_with_spectrum(EVALS)
    basis = null_space_basis(C, threshold, kind)
    assert basis.shape == (8, 4) and basis.dtype == torch.float64
    P = projector(basis)
    torch.testing.assert_close(P, P.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(P @ P, P, atol=1e-12, rtol=0)
    large, small = Q[:, 4:], Q[:, :4]  # eigenvectors of the used and of the null directions
    assert float((P @ large).abs().max()) < 1e-10
    torch.testing.assert_close(P @ small, small, atol=1e-10, rtol=0)


def test_threshold_kinds_select_what_they_say():
    C, _ = spd_with_spectrum(EVALS)
    total = sum(EVALS)
    assert null_space_basis(C, 0.6, "absolute").shape[1] == 5  # λ < 0.6
    assert null_space_basis(C, 0.2, "relative").shape[1] == 5  # λ < 0.2·4
    # energy: the largest prefix of ascending eigenvalues summing to at most t·tr C
    assert null_space_basis(C, (sum(EVALS[:5]) + 1e-9) / total, "energy").shape[1] == 5
    assert null_space_basis(C, (sum(EVALS[:5]) - 1e-9) / total, "energy").shape[1] == 4


# --- the solve ----------------------------------------------------------------------------------


def random_problem(seed: int = 0, d_in: int = 12, d_out: int = 7, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    C, _ = spd_with_spectrum([1e-3] * 6 + [1.0] * (d_in - 6), seed)
    K = torch.randn(d_in, n, generator=g, dtype=torch.float64)
    R = torch.randn(d_out, n, generator=g, dtype=torch.float64)
    Kp = torch.randn(d_in, 2, generator=g, dtype=torch.float64)
    return C, K, R, Kp @ Kp.T


def test_update_equals_the_reference_formula_and_lives_in_the_null_space():
    C, K, R, preserved = random_problem()
    basis = null_space_basis(C, 0.01, "absolute")
    P, l2 = projector(basis), 0.3
    upd = alphaedit_update(K.float(), R.float(), basis, preserved, l2)
    assert upd.shape == (7, 12) and upd.dtype == torch.float64
    exact = alphaedit_update(K, R, basis, preserved, l2)
    # AlphaEdit_main.py: upd = solve(P (K Kᵀ + cache_c) + L2·I, P K Rᵀ), then transposed to (d_out, d_in)
    reference = torch.linalg.solve(P @ (K @ K.T + preserved) + l2 * torch.eye(12, dtype=torch.float64), P @ K @ R.T).T
    torch.testing.assert_close(exact, reference, atol=1e-10, rtol=0)
    # ΔW = ΔW P: nothing reaches the used (large-eigenvalue) directions
    torch.testing.assert_close(exact @ P, exact, atol=1e-12, rtol=0)
    # the normal equations of min ‖M P K − R‖² + ‖M P K_p‖² + l2 ‖M P‖² at M = ΔW
    torch.testing.assert_close(exact @ (K @ K.T + preserved + l2 * torch.eye(12, dtype=torch.float64)) @ P,
                               R @ K.T @ P, atol=1e-10, rtol=0)


def test_small_ridge_fits_the_keys_inside_the_null_space():
    C, K, R, _ = random_problem(1)
    basis = null_space_basis(C, 0.01, "absolute")  # rank 6 ≥ n = 3 keys
    upd = alphaedit_update(K, R, basis, None, 1e-9)
    torch.testing.assert_close(upd @ K, R, atol=1e-6, rtol=0)


def test_memory_makes_the_update_leave_preserved_keys_alone():
    C, K, R, _ = random_problem(2)
    basis = null_space_basis(C, 0.01, "absolute")
    Kp = torch.randn(12, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    free = alphaedit_update(K, R, basis, None, 1e-3)
    kept = alphaedit_update(K, R, basis, 1e4 * Kp @ Kp.T, 1e-3)  # a strongly weighted memory
    assert float((kept @ Kp).norm()) < 1e-2 * float((free @ Kp).norm())


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize("nullspace, match", [
    ({"threshold_kind": "eigen"}, "threshold_kind"),
    ({"threshold": 0.0}, "threshold must be > 0"),
    ({"threshold": -1.0, "threshold_kind": "absolute"}, "threshold must be > 0"),
    ({"threshold": 1.5, "threshold_kind": "energy"}, "fraction"),
    ({"threshold": 1.0, "threshold_kind": "relative"}, "fraction"),
    ({"l2": 0.0}, "l2 must be > 0"),
    ({"treshold": 0.1}, "(?i)did you mean 'threshold'"),
])
@pytest.mark.parametrize("editor", ["rome", "memit"])
def test_bad_hyperparameters_are_user_errors(tiny_lm_factory, editor, nullspace, match):
    base = ROME_CONFIG if editor == "rome" else MEMIT_CONFIG
    with pytest.raises(UserError, match=match):
        get_editor(editor, tiny_lm_factory("llama"), **{**base, "nullspace": {"enabled": True, **nullspace}})


def test_a_threshold_selecting_nothing_is_a_clear_error(tiny_lm_factory):
    editor = get_editor("rome", tiny_lm_factory("llama"), **{**ROME_CONFIG, "nullspace": {"enabled": True, "threshold": 1e-12, "threshold_kind": "absolute"}})
    with pytest.raises(UserError, match=r"raise nullspace\.threshold"):
        editor.prepare()
    with pytest.raises(ValueError, match="no eigenvalue"):
        null_space_basis(torch.eye(3), 0.5, "absolute")


def test_defaults_are_off():
    cfg = NullspaceConfig()
    assert not cfg.enabled and cfg.threshold_kind == "energy"


# --- ROME with the option -----------------------------------------------------------------------


def test_rome_update_is_zero_on_the_preserved_subspace_and_raises_the_target(tiny_lm, arch):
    lm = tiny_lm
    before = state_copy(lm)
    editor = get_editor("rome", lm, **{**ROME_CONFIG, "nullspace": ON})
    delta = editor.edit(REQUESTS[:1])
    assert same_state(lm, before) == []  # compute, don't mutate
    name = lm.down_proj_weight_name(1)
    dW = out_in(lm, delta.weights[name])
    P = projector(editor.null_basis())
    assert 0 < editor.null_basis().shape[1] < P.shape[0]
    eye = torch.eye(P.shape[0], dtype=torch.float64)
    assert float((dW @ (eye - P)).norm()) <= 1e-5 * float(dW.norm())  # ΔW = ΔW P
    info = delta.info["nullspace"]
    assert info["rank"] == editor.null_basis().shape[1] and info["preserved_keys"] == 0
    assert 0 <= info["fit_error"] < 0.5
    json.dumps(delta.info)  # the runner writes it to JSON
    assert delta.keys[name].shape == (P.shape[0], 1)
    logp = target_logprob(lm, REQUESTS[0])
    with applied(lm, delta):
        assert target_logprob(lm, REQUESTS[0]) > logp + 0.1
    assert same_state(lm, before) == []


def sequential_second_update(lm, editor_name: str, config: dict, commit: bool) -> tuple[Delta, Delta]:
    """Edit REQUESTS[0], apply it (and ``commit`` it or not), then edit REQUESTS[1] on that model."""
    editor = get_editor(editor_name, lm, **config)
    first = editor.edit(REQUESTS[:1])
    with applied(lm, first):
        if commit:
            editor.commit(first)
        second = editor.edit(REQUESTS[1:])
    return first, second


@pytest.mark.parametrize("arch_", ["llama", "gpt2"])
def test_rome_after_commit_leaves_the_first_key_nearly_unchanged(tiny_lm_factory, arch_):
    lm = tiny_lm_factory(arch_)
    config = {**ROME_CONFIG, "nullspace": ON}
    name = lm.down_proj_weight_name(1)
    first, kept = sequential_second_update(lm, "rome", config, commit=True)
    _, free = sequential_second_update(lm, "rome", config, commit=False)
    k1 = first.keys[name].double()  # (d_in, 1)
    moved_kept = float((out_in(lm, kept.weights[name]) @ k1).norm())
    moved_free = float((out_in(lm, free.weights[name]) @ k1).norm())
    assert moved_kept < 0.1 * moved_free, (moved_kept, moved_free)
    assert kept.info["nullspace"]["preserved_keys"] == 1


def test_rome_two_requests_in_one_call_equal_edit_commit_edit(tiny_lm_factory):
    """Within one edit() call the keys of earlier requests are preserved like committed ones."""
    lm = tiny_lm_factory("llama")
    config = {**ROME_CONFIG, "nullspace": ON}
    name = lm.down_proj_weight_name(1)
    together = get_editor("rome", lm, **config).edit(REQUESTS)
    first, second = sequential_second_update(lm, "rome", config, commit=True)
    torch.testing.assert_close(together.weights[name], first.weights[name] + second.weights[name], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(together.keys[name], torch.cat([first.keys[name], second.keys[name]], dim=1))
    assert [r["nullspace"]["preserved_keys"] for r in together.info["requests"]] == [0, 1]


def test_edit_does_not_remember_only_commit_does(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    editor = get_editor("rome", lm, **{**ROME_CONFIG, "nullspace": ON})
    a = editor.edit(REQUESTS[1:])
    editor.edit(REQUESTS[:1])  # computed, never committed
    b = editor.edit(REQUESTS[1:])
    assert torch.equal(a.weights[lm.down_proj_weight_name(1)], b.weights[lm.down_proj_weight_name(1)])


def test_commit_of_a_delta_without_keys_is_refused(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    editor = get_editor("rome", lm, **{**ROME_CONFIG, "nullspace": ON})
    name = lm.down_proj_weight_name(1)
    delta = editor.edit(REQUESTS[:1])
    with pytest.raises(ValueError, match="carries no keys"):
        editor.commit(Delta(delta.weights, delta.info))  # as a delta loaded from disk
    editor.commit(Delta({lm.down_proj_weight_name(2): delta.weights[name]}))  # another layer: not ours, ignored


# --- the option off changes nothing -------------------------------------------------------------


@pytest.mark.parametrize("editor_name", ["rome", "memit"])
def test_option_off_ignores_its_settings_and_commits(tiny_lm_factory, editor_name):
    lm = tiny_lm_factory("llama")
    base = ROME_CONFIG if editor_name == "rome" else MEMIT_CONFIG
    plain = get_editor(editor_name, lm, **base).edit(REQUESTS[1:])
    off = {**base, "nullspace": {"enabled": False, "threshold": 0.5, "threshold_kind": "absolute", "l2": 7.0}}
    editor = get_editor(editor_name, lm, **off)
    first = editor.edit(REQUESTS[:1])
    with applied(lm, first):
        editor.commit(first)  # no memory without the option
    again = editor.edit(REQUESTS[1:])
    assert plain.weights.keys() == again.weights.keys()
    assert all(torch.equal(plain.weights[n], again.weights[n]) for n in plain.weights)
    assert "nullspace" not in again.info


# --- MEMIT with the option ----------------------------------------------------------------------


@pytest.mark.parametrize("arch_", ["llama", "gpt2", "gemma2"])
def test_memit_update_is_zero_on_the_preserved_subspace_and_raises_the_targets(tiny_lm_factory, arch_):
    lm = tiny_lm_factory(arch_)
    before = state_copy(lm)
    editor = get_editor("memit", lm, **{**MEMIT_CONFIG, "nullspace": ON})
    delta = editor.edit(REQUESTS)
    assert same_state(lm, before) == []
    for layer in MEMIT_CONFIG["layers"]:
        name = lm.down_proj_weight_name(layer)
        dW = out_in(lm, delta.weights[name])
        P = projector(editor.null_basis(layer))
        eye = torch.eye(P.shape[0], dtype=torch.float64)
        assert float((dW @ (eye - P)).norm()) <= 1e-5 * float(dW.norm())
        assert delta.keys[name].shape == (P.shape[0], len(REQUESTS))
    assert len(delta.info["nullspace"]["rank"]) == len(MEMIT_CONFIG["layers"])
    json.dumps(delta.info)
    logps = [target_logprob(lm, r) for r in REQUESTS]
    with applied(lm, delta):
        after = [target_logprob(lm, r) for r in REQUESTS]
    assert all(a > b + 0.1 for a, b in zip(after, logps)), (logps, after)


def test_memit_after_commit_leaves_the_first_keys_nearly_unchanged(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    config = {**MEMIT_CONFIG, "nullspace": ON}
    first, kept = sequential_second_update(lm, "memit", config, commit=True)
    _, free = sequential_second_update(lm, "memit", config, commit=False)
    for layer in MEMIT_CONFIG["layers"]:
        name = lm.down_proj_weight_name(layer)
        k1 = first.keys[name].double()
        moved_kept = float((out_in(lm, kept.weights[name]) @ k1).norm())
        moved_free = float((out_in(lm, free.weights[name]) @ k1).norm())
        assert moved_kept < 0.1 * moved_free, (layer, moved_kept, moved_free)
    assert kept.info["nullspace"]["preserved_keys"] == [1, 1]


# --- MEMIT's edit_memory (the memory without the projection) ---------------------------------


def test_memit_edit_memory_keeps_the_first_keys_better_than_plain_memit(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    config = {**MEMIT_CONFIG, "edit_memory": True}
    first, kept = sequential_second_update(lm, "memit", config, commit=True)
    _, free = sequential_second_update(lm, "memit", MEMIT_CONFIG, commit=True)  # commit: a no-op without memory
    for layer in MEMIT_CONFIG["layers"]:
        name = lm.down_proj_weight_name(layer)
        k1 = first.keys[name].double()
        moved_kept = float((out_in(lm, kept.weights[name]) @ k1).norm())
        moved_free = float((out_in(lm, free.weights[name]) @ k1).norm())
        assert moved_kept < moved_free, (layer, moved_kept, moved_free)
    assert kept.info["preserved_keys"] == [1, 1] and "preserved_keys" not in free.info
    assert "nullspace" not in kept.info


def test_memit_edit_memory_and_nullspace_together_is_a_user_error(tiny_lm_factory):
    with pytest.raises(UserError, match="choose one"):
        get_editor("memit", tiny_lm_factory("llama"), **{**MEMIT_CONFIG, "edit_memory": True, "nullspace": ON})
