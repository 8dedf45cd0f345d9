"""REP's key adaptor (editors/adaptors.py) and the rome+rep / memit+rep editors (editors/rep.py) on
tiny random models: a closed gate changes nothing, branches add, install/restore/save/load/undo are
exact, training raises the whitened similarity, Algorithm 1's literal form leaves the gate untrained."""

from __future__ import annotations

import pytest
import torch
from tiny import same_state, state_copy

import robustedit.editors  # noqa: F401  (registers the editors)
from robustedit.editors import load_edit, save_edit, undo_saved
from robustedit.editors.adaptors import AdaptorStack, KeyAdaptor, install, uninstall
from robustedit.editors import Delta, applied, apply_delta, get_editor
from robustedit.editors.keys import at_subjects, subject_and_other_states
from robustedit.editors.rep import REPConfig
from robustedit.editors.rep_paper import alignment_loss, train_adaptor
from robustedit.errors import UserError
from robustedit.models.forward import hidden_states
from robustedit.models.text import encode, pad, pad_id
from robustedit.request import EditRequest, Probe

STATS = {"n_tokens": 2048, "seq_len": 64, "batch_size": 8}
ROME_CONFIG = {"layer": 1, "stats": STATS, "context_template_length_params": [[3, 3]], "v_num_grad_steps": 5}
REQUEST = EditRequest("The mother tongue of {} is", "Danielle Yvonne Darrieux", "English", "French",
                      in_domain=(Probe("The mother tongue of {} is", "Darrieux"),
                                 Probe("The mother tongue of {} is", "Yvonne Danielle Darrieux"),
                                 Probe("Some unrelated words come first here. The mother tongue of {} is",
                                       "Danielle Yvonne Darrieux")))


def outputs(lm, texts=("The mother tongue of Danielle Darrieux is", "Paris is the capital of")):
    batch = pad([encode(lm.tokenizer, t) for t in texts], pad_id(lm.tokenizer))
    with torch.no_grad():
        return hidden_states(lm, batch)


def gated(d_in: int, bias: float, seed: int = 0) -> KeyAdaptor:
    torch.manual_seed(seed)
    a = KeyAdaptor(d_in, rank=4, dropout=0.0)
    with torch.no_grad():
        a.gate[2].bias.fill_(bias)  # sigmoid(±50): every gate shut or open
    return a.eval()


def test_closed_gate_leaves_every_key_and_output_bit_identical(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    module = lm.down_proj(1)
    before = outputs(lm)
    k = torch.randn(2, 5, module.in_features)
    closed = gated(module.in_features, -50.0)
    stack = AdaptorStack(module)
    stack.adaptors.append(closed)
    assert stack.apply(k) is k
    install(module, closed)
    try:
        assert torch.equal(outputs(lm), before)
    finally:
        uninstall(module, closed)
    assert not hasattr(module, AdaptorStack.ATTRIBUTE) and not module._forward_pre_hooks


def test_preserve_norm_turns_open_keys_without_resizing_and_leaves_shut_ones_alone():
    torch.manual_seed(1)
    k = torch.randn(6, 16)
    opened, shut = gated(16, 50.0), gated(16, -50.0)
    opened.preserve_norm = shut.preserve_norm = True
    out = opened(k)
    assert torch.allclose(out.norm(dim=-1), k.norm(dim=-1), rtol=1e-5) and not torch.allclose(out, k)
    assert torch.equal(shut(k), k) and opened.config()["preserve_norm"] is True


def test_open_gates_add_their_branches_on_the_unadapted_key(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    module = lm.down_proj(1)
    a, b = gated(module.in_features, 50.0, seed=1), gated(module.in_features, 50.0, seed=2)
    k = torch.randn(3, module.in_features)
    install(module, a)
    install(module, b)
    try:
        got = AdaptorStack.of(module).apply(k)
        torch.testing.assert_close(got, k + a.proj(k) + b.proj(k))
        assert not torch.equal(outputs(lm), outputs_without(lm, module))
    finally:
        uninstall(module, a)
        uninstall(module, b)


def outputs_without(lm, module):
    saved = AdaptorStack.installed(module)
    for a in saved:
        uninstall(module, a)
    try:
        return outputs(lm)
    finally:
        for a in saved:
            install(module, a)


def test_apply_delta_installs_adaptors_and_restore_removes_them_exactly(tiny_lm_factory):
    lm = tiny_lm_factory("gpt2")
    before, state = outputs(lm), state_copy(lm)
    name = lm.down_proj_weight_name(1).removesuffix(".weight")
    module = lm.down_proj(1)
    delta = Delta({}, adaptors={name: gated(module.weight.shape[0], 50.0)})  # GPT-2 Conv1D: (d_in, d_out)
    backup = apply_delta(lm, delta)
    assert not torch.equal(outputs(lm), before)
    backup.restore()
    assert torch.equal(outputs(lm), before) and same_state(lm, state) == []
    assert not module._forward_pre_hooks


def test_training_raises_the_whitened_similarity_of_the_keys():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(12, 24, generator=g)
    targets = torch.randn(2, 24, generator=g) * 5
    owners = torch.tensor([0] * 6 + [1] * 6)
    fit = train_adaptor(keys, owners, targets, REPConfig(variant="paper", steps=30, lr=1e-2, dropout=0.0,
                                                         absolute=False))
    assert fit.info["similarity_after"] > fit.info["similarity_before"] + 0.1
    assert fit.info["losses"][-1] < fit.info["losses"][0]
    assert not fit.adaptor.training  # returned in eval mode: dropout off, binary gate


def test_algorithm_1_literal_form_gives_the_gate_no_gradient():
    """normalize(gate·proj) = normalize(proj): without the residual the gate's gradient vanishes
    (to rounding); with it (Eq. 5) the gate learns."""
    g = torch.Generator().manual_seed(1)
    keys, goal = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    for residual in (False, True):
        torch.manual_seed(0)
        adaptor = KeyAdaptor(16, rank=4, dropout=0.0)
        alignment_loss(adaptor, keys, goal, REPConfig(variant="paper", residual_in_training=residual)).backward()
        gate = torch.cat([p.grad.flatten() for p in adaptor.gate.parameters()]).norm()
        proj = torch.cat([p.grad.flatten() for p in adaptor.proj.parameters()]).norm()
        assert (gate < 1e-5 * proj) == (not residual), (residual, gate, proj)


@pytest.mark.parametrize("variant", ["reference", "paper"])
@pytest.mark.parametrize("editor, config", [("rome+rep", ROME_CONFIG),
                                            ("memit+rep", {"layers": [0, 1], "stats": STATS, "mom2_update_weight": 10.0,
                                                           "context_template_length_params": [[3, 3]],
                                                           "v_num_grad_steps": 5})])
def test_rep_editor_returns_the_base_delta_plus_trained_adaptors_and_saves_loads_undoes(
        tiny_lm_factory, tmp_path, editor, config, variant):
    lm = tiny_lm_factory("llama")
    before, state = outputs(lm), state_copy(lm)
    # τ = 0.5: a tiny model's gate does not reach the paper's 0.9 in 20 steps (its mean stays near
    # 0.65), and on its near-identical keys the reference's anchor (5e4) shuts every gate; the
    # mechanism is what is tested here
    ed = get_editor(editor, lm, **{**config, "rep": {"variant": variant, "steps": 20, "lr": 1e-2, "tau": 0.5,
                                                     "anchor_weight": 1.0}})
    delta = ed.edit([REQUEST])
    assert same_state(lm, state) == [] and torch.equal(outputs(lm), before)  # edit() changes nothing
    layers = config.get("layers", [config.get("layer")])
    assert sorted(delta.adaptors) == sorted(lm.down_proj_weight_name(i).removesuffix(".weight") for i in layers)
    for layer in layers:
        rep = delta.info["rep"][str(layer)]
        assert rep["similarity_after"] > rep["similarity_before"] and rep["gate_open_share"] > 0, rep
        assert rep["n_keys"] >= len(REQUEST.in_domain) and rep["variant"] == variant
    with applied(lm, delta):
        edited = outputs(lm)
    save_edit(tmp_path / "e", lm, delta, [REQUEST], {})
    backup = load_edit(tmp_path / "e", lm)
    assert torch.equal(outputs(lm), edited)
    with pytest.raises(UserError, match="already carries"):
        load_edit(tmp_path / "e", lm)
    undo_saved(tmp_path / "e", lm)
    assert torch.equal(outputs(lm), before) and same_state(lm, state) == []
    assert all(not AdaptorStack.installed(lm.down_proj(i)) for i in layers)
    del backup


MEMIT_CONFIG = {"layers": [0, 1], "stats": STATS, "mom2_update_weight": 10.0,
                "context_template_length_params": [[3, 3]], "v_num_grad_steps": 5}


def test_memit_rep_adapts_only_the_last_layer_when_asked(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    ed = get_editor("memit+rep", lm, **{**MEMIT_CONFIG, "rep": {"variant": "paper", "steps": 3, "adapt_layers": "last"}})
    delta = ed.edit([REQUEST])
    assert list(delta.adaptors) == [lm.down_proj_weight_name(1).removesuffix(".weight")]
    assert list(delta.info["rep"]) == ["1"] and set(delta.weights) == {lm.down_proj_weight_name(i) for i in (0, 1)}


def test_chained_memit_rep_trains_upper_layers_on_the_keys_the_lower_adaptors_make(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    rep = {"variant": "paper", "steps": 20, "lr": 1e-2, "tau": 0.5}
    ed = get_editor("memit+rep", lm, **{**MEMIT_CONFIG, "rep": rep})
    base = ed.base.edit([REQUEST])
    plain = ed.adapt(base, [REQUEST])
    chained = get_editor("memit+rep", lm, **{**MEMIT_CONFIG, "rep": {**rep, "chain": True}}).adapt(base, [REQUEST])
    first = lm.down_proj_weight_name(0).removesuffix(".weight")
    assert plain.adaptors[first].tag() == chained.adaptors[first].tag()  # nothing below layer 0
    assert plain.info["rep"]["0"]["gate_open_share"] > 0  # an open gate at layer 0 moves layer 1's keys
    assert plain.info["rep"]["1"]["similarity_before"] != chained.info["rep"]["1"]["similarity_before"]
    assert all(not AdaptorStack.installed(lm.down_proj(i)) for i in (0, 1))  # nothing left installed


def test_adapt_reuses_one_base_edit_without_changing_it(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    ed = get_editor("rome+rep", lm, **{**ROME_CONFIG, "rep": {"steps": 3}})
    base = ed.base.edit([REQUEST])
    info_before = repr(base.info)
    first, second = ed.adapt(base, [REQUEST]), ed.adapt(base, [REQUEST])
    assert repr(base.info) == info_before and not base.adaptors  # the base delta is left as it was
    assert first.weights is base.weights and "rep" in first.info
    assert [a.tag() for a in first.adaptors.values()] == [a.tag() for a in second.adaptors.values()]  # seeded


def test_subject_and_other_states_split_every_real_token(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    filled = [("The mother tongue of {} is", "Danielle Darrieux"), ("{} was made by", "Apple A5 chip")]
    module = lm.down_proj(1)
    at, others = subject_and_other_states(lm, module, filled, output=False)
    n_tokens = sum(len(encode(lm.tokenizer, t.format(s))) for t, s in filled)
    assert at.shape[0] == 2 and others.shape[0] == n_tokens - 2  # padding excluded
    assert torch.equal(at, at_subjects(lm, module, filled, output=False))


def test_prompt_negatives_train_the_gate_shut_beside_the_subject(tiny_lm_factory):
    lm = tiny_lm_factory("llama")
    rep = {"variant": "paper", "steps": 20, "lr": 1e-2, "tau": 0.5}
    plain = get_editor("rome+rep", lm, **{**ROME_CONFIG, "rep": rep}).edit([REQUEST]).info["rep"]["1"]
    shut = get_editor("rome+rep", lm, **{**ROME_CONFIG, "rep": {**rep, "prompt_negatives": True}})
    info = shut.edit([REQUEST]).info["rep"]["1"]
    assert info["negative_gate_open_share"] < 0.2 and info["gate_open_share"] > 0, info
    assert info["gate_open_share"] > info["negative_gate_open_share"]
    assert "negative_gate_open_share" not in plain


@pytest.mark.parametrize("variant", ["reference", "paper"])
def test_rep_without_in_domain_probes_generates_its_own(tiny_lm_factory, variant):
    lm = tiny_lm_factory("llama")
    ed = get_editor("rome+rep", lm, **{**ROME_CONFIG, "rep": {"variant": variant,
                                                              "robustness": {"context_tokens": 20, "n_per_kind": 4}}})
    bare = EditRequest(REQUEST.prompt, REQUEST.subject, REQUEST.target_new, REQUEST.target_true)
    info = ed.edit([bare]).info["rep"]["1"]
    assert info["n_keys"] > 0 and {"shuffle_subject", "long_context"} <= set(info["kinds"])


def test_rep_config_errors():
    for bad in ({"tau": 1.0}, {"rank": 0}, {"negatives": -1}, {"adapt_layers": "first"}, {"variant": "code"},
                {"goal": "value"}, {"batch_size": 0}, {"anchor_weight": -1.0}, {"dropout": 1.0}, {"lr": float("nan")}):
        with pytest.raises(UserError):
            REPConfig(**bad)


def test_a_users_rephrasings_all_train_the_adaptor_beside_generated_probes(tokenizer):
    from robustedit.editors.rep import user_probes
    from robustedit.data.perturb import RobustnessConfig

    bare = EditRequest(REQUEST.prompt, REQUEST.subject, REQUEST.target_new)
    cfg = RobustnessConfig(context_tokens=20, n_per_kind=4)
    request = user_probes(bare, ["Mlle Darrieux", " Mlle Darrieux ", "D. Y. Darrieux", REQUEST.subject], tokenizer, cfg)
    kinds = [p.kind for p in request.in_domain]
    assert [p.subject for p in request.in_domain if p.kind == "rephrase_subject"] == ["Mlle Darrieux", "D. Y. Darrieux"]
    assert kinds.count("shuffle_subject") == 2 and kinds.count("long_context") == 2  # the generated in-domain half
    assert user_probes(bare, [], tokenizer, cfg).in_domain == request.in_domain[2:]


def test_presets_give_the_authors_and_the_papers_exact_settings():
    from robustedit.editors.settings import preset_names, resolve_editor

    assert {"rep-paper", "rep-reference"} <= set(preset_names())
    _, reference = resolve_editor("rome+rep", "smollm2", "rep-reference")
    assert (reference.rep.variant, reference.rep.lr, reference.rep.steps, reference.rep.anchor_weight,
            reference.rep.batch_size) == ("reference", 5e-4, 10, 5e4, 15)
    _, paper = resolve_editor("memit+rep", "smollm2", "rep-paper")
    assert (paper.rep.variant, paper.rep.lr, paper.rep.steps, paper.rep.absolute, paper.rep.tau) == ("paper", 5e-4, 10, True, 0.9)
    assert paper.layers == resolve_editor("memit", "smollm2")[1].layers  # the base editor's shipped layers stay
