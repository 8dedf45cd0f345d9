"""A model in bfloat16 (the dtype a 7B model runs in on a GPU), tested on the CPU with a tiny Llama:
ROME, MEMIT and FT-L edit it, scoring runs, ``applied`` restores it bit-exactly, the linear algebra
runs in float32 / float64 and only the final update is rounded to bfloat16. And loading in a
dtype: the weights arrive in it, and the fingerprint is computed once per set of weight files."""

from __future__ import annotations

import json
import os

import pytest
import torch
from tiny import same_state, state_copy, tiny_model

from robustedit.data import Case
from robustedit.editors import applied, get_editor
from robustedit.editors.rome import layer_output, rank_one_update, solve_dtype
from robustedit.eval.runner import evaluate_case
from robustedit.eval.scoring import score_pairs
from robustedit.models import load as load_module
from robustedit.models.load import load_model, weights_fingerprint, wrap
from robustedit.models.text import encode, target_ids
from robustedit.request import EditRequest
from robustedit.stats.covariance import StatsConfig, compute_second_moments

STATS = {"n_tokens": 2048, "seq_len": 64, "batch_size": 8}
ROME = {"layer": 1, "stats": STATS, "context_template_length_params": [[3, 5]], "v_num_grad_steps": 10}
MEMIT = {"layers": [0, 1], "stats": STATS, "context_template_length_params": [[3, 5]], "v_num_grad_steps": 10,
         "mom2_update_weight": 10.0}
# Subjects end the prompts, as in test_rome.py (δ at the subject reaches the next token directly).
REQUEST = EditRequest("The mother tongue of {}", "Danielle Darrieux", "English", "French")
OTHER = EditRequest("The sport played by {}", "Michael Jordan", "tennis", "basketball")


@pytest.fixture(scope="module")
def bf16(tokenizer):
    """The tiny Llama of the other tests, cast to bfloat16 (its own copy: the shared one stays float32)."""
    lm = tiny_model("llama", tokenizer)
    return wrap(lm.model.to(torch.bfloat16), tokenizer, "tiny-llama-bf16")


def target_logprob(lm, request: EditRequest) -> float:
    """log P(target_new | prompt) from a plain forward pass, summed in float64."""
    prompt = encode(lm.tokenizer, request.text)
    target = target_ids(lm.tokenizer, request.text, request.target_new)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([prompt + target])).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    return sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(target))


def edit_raises_targets_and_restores(lm, editor, requests: list[EditRequest]):
    before_state = state_copy(lm)
    before = [target_logprob(lm, r) for r in requests]
    delta = editor.edit(requests)
    assert same_state(lm, before_state) == []  # compute, don't mutate
    assert delta.weights and all(d.dtype == torch.bfloat16 for d in delta.weights.values())
    with applied(lm, delta):
        after = [target_logprob(lm, r) for r in requests]
        assert same_state(lm, before_state) == list(delta.weights)  # the edit is in the weights...
    assert same_state(lm, before_state) == []  # ...and restored bit-exactly
    assert all(a > b for a, b in zip(after, before)), (before, after)
    return delta


def test_the_model_is_in_bfloat16(bf16):
    assert bf16.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in bf16.model.parameters())


def test_rome_edits_a_bfloat16_model(bf16):
    edit_raises_targets_and_restores(bf16, get_editor("rome", bf16, **ROME), [REQUEST])


def test_rome_on_bfloat16_writes_v_star_up_to_one_rounding(bf16):
    """Ŵ k* = v* holds in float32 arithmetic up to the one rounding of Ŵ to bfloat16: the keys are
    averaged in float32, W k is recomputed in float32 and the update solved in float64."""
    editor = get_editor("rome", bf16, **ROME)
    delta = editor.edit([REQUEST])
    module = bf16.down_proj(1)
    templates = [c.format(REQUEST.prompt) for c in editor.context_templates()]
    from robustedit.editors.keys import subject_keys
    from robustedit.editors.values import optimize_value

    k_star = subject_keys(bf16, 1, templates, REQUEST.subject).float().mean(0)
    v_star = optimize_value(bf16, 1, REQUEST, templates, editor.config.value).target
    with applied(bf16, delta):
        reached = layer_output(module, k_star)
    unedited = layer_output(module, k_star)
    # The update moves W k* most of the way to v*; what is left is bfloat16 rounding of Ŵ (2⁻⁸).
    assert float((reached - v_star).norm()) < 0.05 * float((unedited - v_star).norm())
    assert float((reached - v_star).norm() / v_star.norm()) < 2 ** -6


def test_layer_output_of_a_bfloat16_layer_is_exact_in_float32(bf16):
    module = bf16.down_proj(1)
    k = torch.randn(module.weight.shape[1], generator=torch.Generator().manual_seed(0))
    out = layer_output(module, k)
    exact = module.weight.double() @ k.double()  # Llama's down-projection has no bias
    assert out.dtype == torch.float32 and solve_dtype(torch.bfloat16) == torch.float32
    assert torch.allclose(out.double(), exact, rtol=1e-5, atol=1e-6)
    rounded = module(k[None].to(torch.bfloat16))[0].double()  # what the bfloat16 module computes
    assert (rounded - exact).abs().max() > (out.double() - exact).abs().max()


def test_rank_one_update_is_float64_for_bfloat16_inputs(bf16):
    module = bf16.down_proj(1)
    d_in = module.weight.shape[1]
    k = torch.randn(d_in, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    v = torch.randn(module.weight.shape[0]).to(torch.bfloat16)
    lam, u = rank_one_update(lambda x: layer_output(module, x), torch.eye(d_in, dtype=torch.bfloat16), k, k, v)
    assert lam.dtype == u.dtype == torch.float64


def test_memit_edits_a_bfloat16_model(bf16):
    edit_raises_targets_and_restores(bf16, get_editor("memit", bf16, **MEMIT), [REQUEST, OTHER])


def test_ft_l_trains_a_bfloat16_model_through_float32_masters(bf16, monkeypatch):
    """Adam's steps of lr = 1e-4 are below half a bfloat16 unit of most weights here (median |w| 0.067,
    unit 2⁻¹¹ ≈ 4.9e-4 there): taken on the weights they mostly round away; through float32 masters
    they add up. The control takes them on the weights, as FT-L did before."""
    settings = {"layers": [1], "steps": 10, "lr": 1e-4, "norm_constraint": 0.0}
    delta = edit_raises_targets_and_restores(bf16, get_editor("ft-l", bf16, **settings), [REQUEST])
    (change,) = delta.weights.values()
    from robustedit.editors import ft_l

    monkeypatch.setattr(ft_l, "_full_precision", lambda t: True)  # the control: Adam on the bf16 weights
    direct = get_editor("ft-l", bf16, **settings).edit([REQUEST])
    (direct_change,) = direct.weights.values()
    assert float((change != 0).float().mean()) > 0.9
    assert float((direct_change != 0).float().mean()) < 0.5
    drop = delta.info["losses"][0] - delta.info["losses"][-1]
    assert drop > 2 * (direct.info["losses"][0] - direct.info["losses"][-1]) > 0


def test_key_statistics_of_a_bfloat16_model_are_float64_and_close_to_float32(bf16, tokenizer):
    cfg = StatsConfig(**STATS)
    lm32 = wrap(tiny_model("llama", tokenizer).model.to(torch.float32), tokenizer, "tiny-llama-f32")
    lm32.model.load_state_dict({k: v.float() for k, v in bf16.model.state_dict().items()})  # the same weights
    C16 = compute_second_moments(bf16, [1], cfg, show_progress=False)[1]
    C32 = compute_second_moments(lm32, [1], cfg, show_progress=False)[1]
    assert C16.dtype == torch.float64 and bool(torch.isfinite(C16).all())
    # The keys differ by bfloat16 activations only; the accumulation loses nothing more.
    assert float((C16 - C32).norm() / C32.norm()) < 0.05


def test_scoring_and_evaluation_run_on_a_bfloat16_model(bf16):
    pairs = [(REQUEST.text, "English"), (REQUEST.text, "French")]
    scores = score_pairs(bf16, pairs)
    for (_, target), s in zip(pairs, scores):
        request = EditRequest(REQUEST.prompt, REQUEST.subject, target)
        n = len(target_ids(bf16.tokenizer, REQUEST.text, target))
        assert s.logprob == pytest.approx(target_logprob(bf16, request) / n, abs=0.05)
    case = Case("0", EditRequest("The mother tongue of {}", "Danielle Darrieux", "English", "French"),
                paraphrase_prompts=("Danielle Darrieux speaks",), neighborhood_prompts=("The mother tongue of Léon Blum is",),
                neighborhood_answer="French")
    before = state_copy(bf16)
    record = evaluate_case(get_editor("rome", bf16, **ROME), case)
    assert same_state(bf16, before) == []
    assert record["metrics"] and all(0.0 <= v <= 1.0 for v in record["metrics"].values())
    assert record["metrics"]["efficacy"] == 1.0


# --- loading in a dtype, and the fingerprint ------------------------------------------------------


def test_loading_in_bfloat16_puts_every_weight_in_it(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), dtype="bfloat16")
    assert lm.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in lm.model.parameters())
    assert lm.fingerprint == weights_fingerprint(lm.model)  # the value it always had


def test_the_fingerprint_is_hashed_once_per_weight_files(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTEDIT_CACHE", str(tmp_path / "cache"))
    calls = []
    real = load_module.weights_fingerprint
    monkeypatch.setattr(load_module, "weights_fingerprint", lambda m: calls.append(1) or real(m))
    first = load_model(str(tiny_model_dir))
    assert len(calls) == 1 and first.fingerprint == real(first.model)
    second = load_model(str(tiny_model_dir))
    assert len(calls) == 1 and second.fingerprint == first.fingerprint  # read back: no weight hashed
    entries = list((tmp_path / "cache" / "fingerprints").glob("*.json"))
    assert len(entries) == 1 and json.loads(entries[0].read_text())["fingerprint"] == first.fingerprint
    assert load_model(str(tiny_model_dir), dtype="bfloat16").fingerprint != first.fingerprint  # another dtype
    assert len(calls) == 2
    # A weight file rewritten in place (another modification time) is hashed again.
    weights = tiny_model_dir / "model.safetensors"
    st = weights.stat()
    try:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert load_model(str(tiny_model_dir)).fingerprint == first.fingerprint
        assert len(calls) == 3
    finally:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_an_unreadable_fingerprint_entry_is_recomputed(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTEDIT_CACHE", str(tmp_path / "cache"))
    value = load_model(str(tiny_model_dir)).fingerprint
    (entry,) = (tmp_path / "cache" / "fingerprints").glob("*.json")
    entry.write_text('{"key": ')  # truncated
    assert load_model(str(tiny_model_dir)).fingerprint == value
    entry.write_text(json.dumps({"key": {"other": 1}, "fingerprint": "stale"}))  # someone else's key
    assert load_model(str(tiny_model_dir)).fingerprint == value


# --- Ray workers on GPUs (checked without a GPU: the options Ray gets, the refusals) -------------


def _plan(**kw):
    from robustedit.eval.plan import EvalPlan

    return EvalPlan("rome", "counterfact", **kw)


@pytest.mark.parametrize("kw, match", [
    ({"worker_gpus": 1}, "only apply with --workers"),
    ({"workers": 2, "worker_gpus": -1, "device": "cuda"}, "at least 0"),
    ({"workers": 2, "worker_gpus": 1.5, "device": "cuda"}, "whole number"),
    ({"workers": 2, "worker_gpus": 1}, "add --device cuda"),
    ({"workers": 2, "device": "cuda"}, "needs --worker-gpus"),
    ({"workers": 2, "worker_gpus": 1, "device": "cuda:1"}, "use --device cuda"),
])
def test_worker_gpus_are_checked_with_the_plan(kw, match):
    from robustedit.errors import UserError

    with pytest.raises(UserError, match=match):
        _plan(**kw).validate()


@pytest.mark.parametrize("gpus", [0.5, 1, 2])
def test_worker_gpus_that_ray_accepts_pass(gpus):
    assert _plan(workers=2, worker_gpus=gpus, device="cuda").validate() is None


def test_each_ray_worker_asks_for_its_gpus(caplog):
    pytest.importorskip("ray")
    from types import SimpleNamespace

    from robustedit.errors import UserError
    from robustedit.eval.distributed import RayEvaluator
    from robustedit.eval.runner import EvalOptions
    from robustedit.eval.distributed import EditorSpec

    def options_of(evaluator) -> dict:
        seen: dict = {}

        class Remote:
            def options(self, **kw):
                seen.update(kw)
                return self

            def remote(self, *args):
                return object()

        evaluator._ray = SimpleNamespace(remote=lambda cls: Remote())  # no Ray started
        evaluator._spawn()
        return seen

    spec = EditorSpec("rome", device="cuda")
    assert options_of(RayEvaluator(spec, EvalOptions(), workers=2, worker_gpus=0.5))["num_gpus"] == 0.5
    assert "num_gpus" not in options_of(RayEvaluator(spec, EvalOptions(), workers=2))  # CPU workers as before
    evaluator = RayEvaluator(spec, EvalOptions(), workers=2, worker_gpus=1)
    evaluator._started_ray = True  # a local Ray: its GPUs are all there will be
    with pytest.raises(UserError, match="need 2 GPUs; the Ray cluster has 1"):
        evaluator._check_gpus(1)
    evaluator._started_ray = False  # a cluster may add nodes: a warning
    evaluator._check_gpus(1)
    assert "will wait for more" in caplog.text
    evaluator._check_gpus(2)
