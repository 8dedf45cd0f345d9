"""MEND's building blocks (editors/gradients.py) on tiny random models: the recorded factors sum to
the true weight gradient on every architecture, the transform is the standardisation alone at
initialisation, and the running statistics are the data's mean and standard deviation."""

from __future__ import annotations

import pytest
import torch

from robustedit.editors.gradients import (
    GradientTransform,
    MENDNet,
    RunningNorm,
    factor_update,
    gradient_factors,
)
from robustedit.editors.sss import edit_loss_and_sss, teacher_forced


def test_factors_sum_to_the_weight_gradient(tiny_lm):
    lm = tiny_lm
    names = {lm.down_proj_weight_name(i).removesuffix(".weight"): i for i in (0, 2)}
    modules = {n: lm.down_proj(i) for n, i in names.items()}
    weights = [m.weight for m in modules.values()]
    for w in weights:
        w.requires_grad_(True)
    try:
        tf = teacher_forced(lm, ["The mother tongue of Danielle Darrieux is", "The capital of France is"],
                            ["English", "Rome"])
        with torch.enable_grad(), gradient_factors(modules) as found:
            J, _ = edit_loss_and_sss(lm, tf, None)
            J.backward()
        assert set(found) == set(modules)
        for name, module in modules.items():
            f = found[name]
            rebuilt = lm.spec.stored(factor_update(f.u, f.delta))
            assert torch.allclose(rebuilt, module.weight.grad, atol=1e-6, rtol=1e-4), name
    finally:
        for w in weights:
            w.requires_grad_(False)
            w.grad = None


def test_the_untrained_transform_is_the_standardisation_alone():
    torch.manual_seed(0)
    u, delta = torch.randn(12, 6) * 3 + 1, torch.randn(12, 4) * 0.01
    t = GradientTransform(6, 4, rank=3, n_hidden=2)
    u_t, d_t = t(u, delta)  # training mode: the statistics come from these rows
    assert torch.allclose(u_t, (u - u.mean(0)) / u.std(0), atol=1e-5)
    assert torch.allclose(d_t, (delta - delta.mean(0)) / delta.std(0), atol=1e-4)
    raw = GradientTransform(6, 4, rank=3, normalize=False)
    assert torch.equal(raw(u, delta)[0], u) and torch.equal(raw(u, delta)[1], delta)


def test_rows_without_gradient_are_dropped():
    u, delta = torch.randn(5, 6), torch.randn(5, 4)
    delta[1] = 0  # a padding position: its output gradient is zero
    u_t, d_t = GradientTransform(6, 4, normalize=False)(u, delta)
    assert u_t.shape == (4, 6) and d_t.shape == (4, 4)


def test_running_norm_accumulates_in_training_and_freezes_in_eval():
    torch.manual_seed(1)
    chunks = [torch.randn(n, 5) * 2 + 3 for n in (3, 7, 1, 9)]
    norm = RunningNorm(5)
    for c in chunks:
        norm(c)
    every = torch.cat(chunks).double()
    assert torch.allclose(norm.mean, every.mean(0)) and torch.allclose(norm.std, every.std(0))
    norm.eval()
    before = norm.count.clone()
    norm(torch.randn(4, 5))
    assert torch.equal(norm.count, before)
    with pytest.raises(RuntimeError, match="two vectors"):
        RunningNorm(5).eval()(torch.randn(2, 5))


def test_an_untrained_mend_net_without_standardisation_is_one_gradient_step(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    modules = {lm.down_proj_weight_name(i).removesuffix(".weight"): lm.down_proj(i) for i in (1, 2)}
    shapes = {n: (m.weight.shape[1], m.weight.shape[0]) for n, m in modules.items()}
    net = MENDNet(shapes, rank=8, init_lr=0.1, normalize=False)
    for m in modules.values():
        m.weight.requires_grad_(True)
    try:
        tf = teacher_forced(lm, ["The capital of France is"], ["Rome"])
        with torch.enable_grad(), gradient_factors(modules) as found:
            edit_loss_and_sss(lm, tf, None)[0].backward()
        updates = net.updates(found)
        for name, module in modules.items():
            assert torch.allclose(updates[name], -0.1 * module.weight.grad, atol=1e-7, rtol=1e-4)
        assert updates[next(iter(modules))].requires_grad  # α is trained through the update
    finally:
        for m in modules.values():
            m.weight.requires_grad_(False)
            m.weight.grad = None
