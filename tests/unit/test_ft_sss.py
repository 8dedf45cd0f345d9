"""FT-L (editors/ft_l.py) and the SSS regularizer (editors/sss.py) on tiny random models: λ_max is
Eq. 9 (checked against finite differences), its gradient reaches the trained weights, FT-L moves
the prediction within its L∞ bound and leaves the model as it found it."""

from __future__ import annotations

import pytest
import torch
from tiny import same_state, state_copy, tiny_model

import robustedit.editors  # noqa: F401  (registers the editors)
from robustedit.editors import applied, get_editor
from robustedit.editors.sss import SSSConfig, combined_loss, edit_loss_and_sss, per_example_nll, teacher_forced
from robustedit.errors import UserError
from robustedit.request import EditRequest

PROMPTS = ["The mother tongue of Danielle Darrieux is", "The capital of France is"]
TARGETS = ["English", "Rome"]
REQUEST = EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])
def test_sss_is_the_mean_squared_input_gradient_norm_by_finite_differences(tokenizer, arch):
    lm = tiny_model(arch, tokenizer)
    lm.model.double()
    tf = teacher_forced(lm, PROMPTS[:1], TARGETS[:1])
    _, lam = edit_loss_and_sss(lm, tf, SSSConfig())
    x0 = lm.model.get_input_embeddings()(tf.batch.input_ids).detach()

    def J(x):
        with torch.no_grad():
            out = lm.model(inputs_embeds=x, attention_mask=tf.batch.attention_mask, use_cache=False)
            return float(per_example_nll(out.logits, tf).mean())

    m = int(tf.prompt_mask.sum())
    eps, total = 1e-3, 0.0  # not smaller: RMSNorm computes in float32 even in a float64 model
    for i in range(m):  # central differences over every coordinate of every prompt token
        for d in range(x0.shape[-1]):
            step = torch.zeros_like(x0)
            step[0, i, d] = eps
            total += ((J(x0 + step) - J(x0 - step)) / (2 * eps)) ** 2
    assert float(lam.detach()) == pytest.approx(total / m, rel=1e-3)


@pytest.mark.parametrize("wrt", ["embeddings", "last_hidden"])
def test_the_sss_term_sends_gradient_to_the_trained_down_projection(tiny_lm_factory, wrt):
    lm = tiny_lm_factory("llama")
    weight = lm.down_proj(1).weight
    weight.requires_grad_(True)
    try:
        cfg = SSSConfig(coefficient=1.0, wrt=wrt)  # SSS alone: any gradient must come through it
        with torch.enable_grad():
            J, lam = edit_loss_and_sss(lm, teacher_forced(lm, PROMPTS, TARGETS), cfg)
            combined_loss(J, lam, cfg).backward()
        assert lam > 0 and weight.grad is not None and weight.grad.abs().sum() > 0
    finally:
        weight.requires_grad_(False)
        weight.grad = None


def test_batched_sss_is_the_mean_of_each_examples(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    with torch.enable_grad():
        both = edit_loss_and_sss(lm, teacher_forced(lm, PROMPTS, TARGETS), SSSConfig())
        alone = [edit_loss_and_sss(lm, teacher_forced(lm, [p], [t]), SSSConfig()) for p, t in zip(PROMPTS, TARGETS)]
    assert float(both[0].detach()) == pytest.approx(sum(float(a[0].detach()) for a in alone) / 2, rel=1e-5)
    assert float(both[1].detach()) == pytest.approx(sum(float(a[1].detach()) for a in alone) / 2, rel=1e-4)


def target_logprob(lm, request: EditRequest) -> float:
    with torch.no_grad():
        return -float(edit_loss_and_sss(lm, teacher_forced(lm, [request.text], [request.target_new]), None)[0])


# With C = 0.9 the edit loss weighs 0.1, so the same steps move the target less.
@pytest.mark.parametrize("editor, gain", [("ft-l", 1.0), ("ft-l+sss", 0.2)])
def test_ft_l_raises_the_target_within_its_bound_and_leaves_the_model_unchanged(tiny_lm_factory, editor, gain):
    lm = tiny_lm_factory("llama")
    state, before = state_copy(lm), target_logprob(lm, REQUEST)
    ed = get_editor(editor, lm, **{"layers": [1, 2], "steps": 20, "lr": 1e-2, "norm_constraint": 0.05})
    delta = ed.edit([REQUEST])
    assert same_state(lm, state) == [] and all(p.grad is None and not p.requires_grad for p in lm.model.parameters())
    assert set(delta.weights) == {lm.down_proj_weight_name(i) for i in (1, 2)}
    assert max(float(d.abs().max()) for d in delta.weights.values()) <= 0.05 + 1e-6
    with applied(lm, delta):
        after = target_logprob(lm, REQUEST)
    assert after > before + gain, (before, after)
    assert ("sss" in delta.info) == (editor == "ft-l+sss")


def test_sss_with_c_zero_is_plain_ft_l(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    cfg = {"layers": [1], "steps": 5, "lr": 1e-2, "norm_constraint": 0.0}
    plain = get_editor("ft-l", lm, **cfg).edit([REQUEST])
    zero = get_editor("ft-l+sss", lm, **{**cfg, "sss": {"coefficient": 0.0}}).edit([REQUEST])
    name = lm.down_proj_weight_name(1)
    assert torch.allclose(plain.weights[name], zero.weights[name], atol=1e-7)


def test_ft_l_and_sss_config_errors(tiny_lm_factory):
    for bad in ({"coefficient": 1.5}, {"wrt": "logits"}, {"tokens": "subject"}):
        with pytest.raises(UserError):
            SSSConfig(**bad)
    with pytest.raises(UserError):
        get_editor("ft-l", tiny_lm_factory("llama"), **{"layers": [7]})


def test_the_embeddings_path_is_the_models_own_forward(tiny_lm):
    """SSS feeds the token embeddings in as ``inputs_embeds``; on every architecture (Gemma scales
    its embeddings inside the embedding module) that must be the same forward as the token ids."""
    tf = teacher_forced(tiny_lm, PROMPTS, TARGETS)
    with torch.no_grad():
        J, _ = edit_loss_and_sss(tiny_lm, tf, None)
        out = tiny_lm.model(input_ids=tf.batch.input_ids, attention_mask=tf.batch.attention_mask, use_cache=False)
        reference = per_example_nll(out.logits, tf).mean()
    assert torch.allclose(J, reference, atol=1e-5), (float(J), float(reference))


def test_sss_runs_with_the_fused_attention_real_models_load_with(tokenizer):
    """Real checkpoints load with SDPA attention, whose fused CPU kernel has no double backward."""
    lm = tiny_model("llama", tokenizer)
    lm.model.config._attn_implementation = "sdpa"
    weight = lm.down_proj(1).weight
    weight.requires_grad_(True)
    with torch.enable_grad():
        J, lam = edit_loss_and_sss(lm, teacher_forced(lm, PROMPTS, TARGETS), SSSConfig())
        combined_loss(J, lam, SSSConfig()).backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_reference_form_is_the_summed_squared_gradient_at_the_final_hidden_state(tiny_lm_factory, arch):
    """Σ over target positions of ‖W_Uᵀ(softmax(z) − e_y)‖² / N², N the batch's target tokens: the
    authors' term, computed by hand from the logits and the unembedding."""
    lm = tiny_lm_factory(arch)
    tf = teacher_forced(lm, PROMPTS, TARGETS)
    with torch.enable_grad():
        _, sss = edit_loss_and_sss(lm, tf, SSSConfig(form="reference"))
    with torch.no_grad():
        logits = lm.model(input_ids=tf.batch.input_ids, attention_mask=tf.batch.attention_mask).logits
        z = logits[tf.target_row, tf.target_pos].double()
        residual = z.softmax(-1) - torch.nn.functional.one_hot(tf.target_tok, z.shape[-1]).double()
        W = lm.model.get_output_embeddings().weight.double()  # (vocab, d)
        expected = ((residual @ W) / len(tf.target_tok)).pow(2).sum()
    assert float(sss.detach()) == pytest.approx(float(expected), rel=1e-4)


@pytest.mark.parametrize("form", ["paper", "reference"])
def test_detached_sss_trains_exactly_as_the_rescaled_edit_loss(tiny_lm_factory, form):
    """The control: with ``detach`` the combined loss has the value (1 − C)·J + C·SSS but the
    gradient of (1 − C)·J alone."""
    lm = tiny_lm_factory("llama")
    weight = lm.down_proj(1).weight
    tf = teacher_forced(lm, PROMPTS, TARGETS)
    grads = {}
    weight.requires_grad_(True)
    try:
        for name, cfg in (("detached", SSSConfig(coefficient=0.7, form=form, detach=True)),
                          ("attached", SSSConfig(coefficient=0.7, form=form)), ("none", None)):
            with torch.enable_grad():
                J, sss = edit_loss_and_sss(lm, tf, cfg)
                loss = combined_loss(J, sss, cfg) if cfg else 0.3 * J
                loss.backward()
            grads[name] = weight.grad.detach().clone()
            weight.grad = None
            if name == "detached":
                assert not sss.requires_grad and float(loss.detach()) == pytest.approx(0.3 * float(J.detach()) + 0.7 * float(sss), rel=1e-5)
    finally:
        weight.requires_grad_(False)
    torch.testing.assert_close(grads["detached"], grads["none"])
    assert not torch.allclose(grads["attached"], grads["none"])


def test_sss_form_is_checked():
    with pytest.raises(UserError, match="sss.form"):
        SSSConfig(form="code")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])
def test_logits_of_the_target_positions_alone_give_the_same_losses_and_gradients(tokenizer, monkeypatch, arch):
    """The forward projects only ``tf.keep`` onto the vocabulary; with every position projected
    (``logits_to_keep`` dropped) J, both SSS forms and the trained weight's gradient are the same."""
    import robustedit.editors.sss as sss_module

    lm = tiny_model(arch, tokenizer)  # its own copy: made float64
    lm.model.double()
    weight = lm.down_proj(1).weight
    tf = teacher_forced(lm, PROMPTS, TARGETS)  # two rows of different lengths: padding, several kept columns
    assert len(tf.keep) < tf.batch.input_ids.shape[1]
    every_position = sss_module.forward

    def results():
        out = []
        for cfg in (None, SSSConfig(coefficient=0.5), SSSConfig(coefficient=0.5, form="reference")):
            with torch.enable_grad():
                J, lam = edit_loss_and_sss(lm, tf, cfg)
                combined_loss(J, lam, cfg).backward()
            out.append((J.detach(), None if lam is None else lam.detach(), weight.grad.clone()))
            weight.grad = None
        return out

    weight.requires_grad_(True)
    try:
        kept = results()
        monkeypatch.setattr(sss_module, "forward", lambda lm_, w=None, logits_to_keep=None, **kw: every_position(lm_, w, **kw))
        full = results()
    finally:
        weight.requires_grad_(False)
    for (J1, s1, g1), (J0, s0, g0) in zip(kept, full):
        torch.testing.assert_close(J1, J0)
        if s0 is not None:
            torch.testing.assert_close(s1, s0)
        torch.testing.assert_close(g1, g0)
