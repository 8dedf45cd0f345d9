"""The architecture table against real (tiny, random) models of every supported ``model_type``.

Each entry's paths must name the modules transformers builds, with the shapes editors assume; the
prefix-cached forward pass and the head-at-chosen-positions shortcut must equal a plain forward.
"""

from __future__ import annotations

import pytest
import torch
from tiny import ARCHITECTURES as TINY_ARCHITECTURES
from tiny import TEST_SENTENCES, tiny_model
from torch import nn

from robustedit.editors.keys import subject_keys, subject_prompts
from robustedit.errors import UserError
from robustedit.models.forward import hidden_states, logits_at
from robustedit.models.hooks import capture_input, hidden_of, hooked, with_hidden
from robustedit.models.prefix import PrefixCachedBatch
from robustedit.models.specs import ARCHITECTURES, spec_for
from robustedit.models.text import encode, pad, pad_id

ATOL = 1e-5


def dims(lm) -> tuple[int, int, int]:
    """(d_model, d_mlp, n_layers) from the model's own config."""
    cfg = lm.model.config
    d = getattr(cfg, "hidden_size", None) or cfg.n_embd
    d_mlp = getattr(cfg, "intermediate_size", None) or cfg.n_inner
    return d, d_mlp, cfg.num_hidden_layers


def test_every_tiny_architecture_is_in_the_table():
    assert set(TINY_ARCHITECTURES) <= set(ARCHITECTURES.names())


def test_unknown_architecture_is_a_user_error():
    with pytest.raises(UserError, match="not in robustedit's table"):
        spec_for("llamma")


# --- spec paths ---------------------------------------------------------------------------------


def test_layers_base_embeddings_and_head_resolve(tiny_lm, tokenizer, arch):
    d, _, n_layers = dims(tiny_lm)
    spec, model = tiny_lm.spec, tiny_lm.model
    layers = tiny_lm.module(spec.layers)
    assert isinstance(layers, nn.ModuleList) and len(layers) == n_layers == tiny_lm.n_layers
    assert tiny_lm.module(spec.layer_path(n_layers - 1)) is layers[-1]

    # Cross-check against transformers' own accessors.
    assert tiny_lm.base is model.base_model
    emb = tiny_lm.module(spec.embeddings)
    assert emb is model.get_input_embeddings()
    assert isinstance(emb, nn.Embedding) and tuple(emb.weight.shape) == (len(tokenizer), d)
    head = tiny_lm.lm_head
    assert head is model.get_output_embeddings()
    assert tuple(head.weight.shape) == (len(tokenizer), d)


def test_final_norm_produces_the_base_output(tiny_lm):
    """``final_norm`` is the last module the base applies: its output is ``last_hidden_state``."""
    norm = tiny_lm.module(tiny_lm.spec.final_norm)
    seen = []
    batch = pad([encode(tiny_lm.tokenizer, TEST_SENTENCES[0])], pad_id(tiny_lm.tokenizer))
    with torch.no_grad(), hooked(norm, post=lambda _m, _a, out: seen.append(out)):
        h = hidden_states(tiny_lm, batch)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], h, atol=0, rtol=0)


def test_down_proj_of_every_layer_maps_mlp_keys_to_the_residual(tiny_lm):
    d, d_mlp, n_layers = dims(tiny_lm)
    batch = pad([encode(tiny_lm.tokenizer, TEST_SENTENCES[1])], pad_id(tiny_lm.tokenizer))
    for layer in range(n_layers):
        proj = tiny_lm.down_proj(layer)
        assert proj is tiny_lm.module(tiny_lm.spec.down_proj_path(layer))
        assert tiny_lm.down_proj_weight_name(layer) in dict(tiny_lm.model.named_parameters())
        expected = (d_mlp, d) if tiny_lm.spec.weight_is_in_out else (d, d_mlp)
        assert tuple(proj.weight.shape) == expected
        outs = []
        with torch.no_grad(), capture_input(proj) as ins, hooked(proj, post=lambda _m, _a, o: outs.append(o)):
            tiny_lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        assert len(ins) == 1 and ins[0].shape[-1] == d_mlp  # the key k
        assert outs[0].shape[-1] == d  # the value v


def test_mlp_input_projections_read_the_residual_and_write_the_keys(tiny_lm):
    """``mlp_in`` names the MLP's input matrices: each maps the d-wide normed residual to the
    MLP's hidden width (twice it for a fused gate and up projection)."""
    d, d_mlp, _ = dims(tiny_lm)
    params = dict(tiny_lm.model.named_parameters())
    for path in tiny_lm.spec.mlp_in:
        module = tiny_lm.module(f"{tiny_lm.spec.layer_path(0)}.{path}")
        assert f"{tiny_lm.spec.layer_path(0)}.{path}.weight" in params
        shape = tuple(module.weight.shape)
        rows, cols = (shape[1], shape[0]) if tiny_lm.spec.weight_is_in_out else shape
        assert cols == d and rows in (d_mlp, 2 * d_mlp), (path, shape)


def test_layer_out_of_range_is_a_user_error(tiny_lm):
    with pytest.raises(UserError, match="out of range"):
        tiny_lm.down_proj(tiny_lm.n_layers)
    with pytest.raises(UserError):
        tiny_lm.check_layer(-1)


# --- forward shortcuts --------------------------------------------------------------------------


def full_suffix_hidden(lm, rows, split):
    """The suffix columns of a plain right-padded forward pass, one ``(len - split, d)`` per row."""
    batch = pad(rows, pad_id(lm.tokenizer))
    with torch.no_grad():
        h = hidden_states(lm, batch)  # (B, T, d)
    return [h[i, s : len(r)] for i, (r, s) in enumerate(zip(rows, split))]


@pytest.mark.parametrize(
    "split_of",
    [
        pytest.param(lambda n: [0, 4, n[2] - 1, 9], id="mixed-with-empty-prefix"),
        pytest.param(lambda n: [0, 0, 0, 0], id="no-prefix"),
        pytest.param(lambda n: [3, 3, 3, 3], id="equal-prefixes"),
    ],
)
def test_prefix_cached_hidden_equals_full_forward(tiny_lm, split_of):
    tok = tiny_lm.tokenizer
    rows = [encode(tok, s) for s in TEST_SENTENCES[:4]]
    assert len({len(r) for r in rows}) > 1  # rows of different lengths
    split = split_of([len(r) for r in rows])
    expected = full_suffix_hidden(tiny_lm, rows, split)
    with torch.no_grad():
        pcb = PrefixCachedBatch.build(tiny_lm, rows, split, pad_id(tok))
        got = pcb.hidden()  # (B, S, d)
        again = pcb.hidden()  # the cache is not consumed by a pass
    assert got.shape == (len(rows), max(len(r) - s for r, s in zip(rows, split)), expected[0].shape[-1])
    for i, e in enumerate(expected):
        torch.testing.assert_close(got[i, : e.shape[0]], e, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(again, got, atol=0, rtol=0)


def test_selected_rows_of_a_prefix_cached_batch_equal_their_full_forward(tiny_lm):
    """Dropping rows (finished requests) keeps the others' hidden states and trims padding columns."""
    tok = tiny_lm.tokenizer
    rows = [encode(tok, s) for s in TEST_SENTENCES[:4]]
    split = [0, 4, len(rows[2]) - 1, 2]
    expected = full_suffix_hidden(tiny_lm, rows, split)
    keep = torch.tensor([1, 2])
    with torch.no_grad():
        full = PrefixCachedBatch.build(tiny_lm, rows, split, pad_id(tok))
        got = full.select(keep).hidden()
        again = full.hidden()  # selecting leaves the original batch usable
    assert got.shape[1] == max(len(rows[i]) - split[i] for i in keep.tolist())
    for j, i in enumerate(keep.tolist()):
        torch.testing.assert_close(got[j, : expected[i].shape[0]], expected[i], atol=ATOL, rtol=1e-4)
    for i, e in enumerate(expected):
        torch.testing.assert_close(again[i, : e.shape[0]], e, atol=ATOL, rtol=1e-4)


def test_hidden_from_a_layer_equals_the_full_pass_and_its_gradient(tiny_lm):
    """Running only layers L… on the recorded input of layer L gives the same states, and the
    same gradient for a δ added to layer L's output at the first suffix column."""
    tok = tiny_lm.tokenizer
    rows = [encode(tok, s) for s in TEST_SENTENCES[:4]]
    split = [0, 4, len(rows[2]) - 1, 2]
    L = tiny_lm.n_layers - 1
    pcb = PrefixCachedBatch.build(tiny_lm, rows, split, pad_id(tok))
    delta = torch.zeros(tiny_lm.d_model, requires_grad=True)

    def add(_m, _a, out):
        h = hidden_of(out)
        return with_hidden(out, torch.cat([h[:, :1] + delta, h[:, 1:]], dim=1))

    results = []
    for from_layer in (0, L, L):  # the second L call reuses the recording
        with hooked(tiny_lm.layer(L), post=add):
            h = pcb.hidden(from_layer=from_layer)
            (grad,) = torch.autograd.grad(h.float().pow(2).sum(), delta)
        results.append((h.detach(), grad))
    for h, grad in results[1:]:
        for i, (r, sp) in enumerate(zip(rows, split)):
            n = len(r) - sp
            torch.testing.assert_close(h[i, :n], results[0][0][i, :n], atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(grad, results[0][1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sliding", ["mistral", "gemma2", "gemma3_text"])
def test_prefix_cached_hidden_with_rows_longer_than_the_sliding_window(sliding, tokenizer):
    lm = tiny_model(sliding, tokenizer, sliding_window=6)
    rows = [encode(tokenizer, s) for s in TEST_SENTENCES[:4]]
    split = [0, 4, len(rows[2]) - 1, 9]
    expected = full_suffix_hidden(lm, rows, split)
    with torch.no_grad():
        got = PrefixCachedBatch.build(lm, rows, split, pad_id(tokenizer)).hidden()
    for i, e in enumerate(expected):
        torch.testing.assert_close(got[i, : e.shape[0]], e, atol=ATOL, rtol=1e-4)


def test_logits_at_matches_model_logits(tiny_lm, arch):
    tok = tiny_lm.tokenizer
    rows = [encode(tok, s) for s in TEST_SENTENCES[:3]]
    batch = pad(rows, pad_id(tok))
    r = torch.tensor([0, 0, 1, 2, 2])
    c = torch.tensor([0, len(rows[0]) - 1, len(rows[1]) - 1, 5, len(rows[2]) - 1])
    with torch.no_grad():
        want = tiny_lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[r, c]
        got = logits_at(tiny_lm, hidden_states(tiny_lm, batch), r, c)
    assert got.shape == (5, len(tok))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


def test_subject_keys_are_the_down_proj_inputs_at_the_subject(tiny_lm):
    d, d_mlp, _ = dims(tiny_lm)
    templates = ["{} is a", "The mother tongue of {} is", "Therefore, I think that {} speaks"]
    subject = "Danielle Darrieux"
    keys = subject_keys(tiny_lm, 1, templates, subject)
    assert keys.shape == (len(templates), d_mlp)
    # Each row alone, unpadded, through the whole model: the same key at the subject's last token.
    rows, last = subject_prompts(tiny_lm.tokenizer, templates, subject)
    for i, (row, j) in enumerate(zip(rows, last)):
        assert tiny_lm.tokenizer.decode(row[: j + 1]).endswith("Darrieux")
        with torch.no_grad(), capture_input(tiny_lm.down_proj(1)) as seen:
            tiny_lm.model(input_ids=torch.tensor([row]))
        torch.testing.assert_close(keys[i], seen[0][0, j], atol=ATOL, rtol=1e-4)
