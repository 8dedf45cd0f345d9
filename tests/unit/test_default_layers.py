"""Default layers for a model without a shipped config: chosen from its depth, always in range
(a 2-layer model used to get ROME's dataclass default, layer 4: "layer 4 is out of range"), and
never over a shipped file or a user's setting."""

from __future__ import annotations

import json

import pytest
from tiny import tiny_model

from robustedit.editors import applied, get_editor, resolve_editor
from robustedit.editors.rome import ROME
from robustedit.editors.settings import (
    depth_defaults,
    memit_layers_for_depth,
    model_depth,
    rome_layer_for_depth,
)
from robustedit.errors import UserError
from robustedit.request import EditRequest

DEPTHS = (2, 3, 12, 24, 32, 48)
STATS = {"n_tokens": 1024, "seq_len": 64, "batch_size": 8}


@pytest.mark.parametrize("n", [1, *DEPTHS, 16, 18, 28, 30, 36, 44, 80])
def test_the_rule_stays_in_range(n):
    layer, layers = rome_layer_for_depth(n), memit_layers_for_depth(n)
    assert 0 <= layer < n
    assert layers and all(0 <= i < n for i in layers)
    assert list(layers) == list(range(layers[0], layers[0] + len(layers)))  # consecutive, increasing
    assert len(layers) == max(1, min(5, n // 4))


def test_the_rule_gives_the_references_layers():
    # ROME: GPT-J 6B (28 layers) and Llama-2-7B (32) edit layer 5; MEMIT: Llama-2-7B 4-8 (EasyEdit),
    # GPT-J 3-8 (reference) -> 4-8. The sources are listed in editors/settings.py.
    assert rome_layer_for_depth(28) == rome_layer_for_depth(32) == 5
    assert memit_layers_for_depth(32) == (4, 5, 6, 7, 8) == memit_layers_for_depth(28)
    assert [rome_layer_for_depth(n) for n in DEPTHS] == [0, 0, 2, 4, 5, 8]
    assert [memit_layers_for_depth(n) for n in DEPTHS] == [(0,), (0,), (1, 2, 3), (3, 4, 5, 6, 7), (4, 5, 6, 7, 8),
                                                          (7, 8, 9, 10, 11)]


@pytest.fixture(scope="module")
def models(tokenizer):
    """Tiny Llamas (width 32) of each depth in DEPTHS, built once."""
    return {n: tiny_model("llama", tokenizer, num_hidden_layers=n) for n in DEPTHS}


@pytest.mark.parametrize("n", DEPTHS)
def test_editors_on_a_model_without_shipped_config_get_layers_from_its_depth(models, n):
    lm = models[n]
    assert lm.n_layers == n and lm.name == "tiny-llama"  # no resources/configs/*/tiny-llama.yaml
    rome = get_editor("rome", lm, stats=STATS)
    assert rome.config.layer == rome_layer_for_depth(n)
    memit = get_editor("memit", lm, stats=STATS)
    assert memit.config.layers == memit_layers_for_depth(n)
    assert get_editor("ft-l", lm).config.layers == (rome_layer_for_depth(n),)
    # Add-ons take their base editor's rule.
    assert get_editor("rome+rep", lm).config.layer == rome_layer_for_depth(n)
    assert get_editor("memit+rep", lm).config.layers == memit_layers_for_depth(n)
    assert get_editor("ft-l+sss", lm).config.layers == (rome_layer_for_depth(n),)


def test_a_two_layer_model_is_edited_with_the_default_layer(models):
    lm = models[2]
    with pytest.raises(UserError, match="layer 4 is out of range"):
        ROME(lm)  # the dataclass default alone, as every model without a shipped file got before
    editor = get_editor("rome", lm, stats=STATS, context_template_length_params=[[3, 2]], v_num_grad_steps=3)
    assert editor.config.layer == 0
    delta = editor.edit([EditRequest("The mother tongue of {}", "Danielle Darrieux", "English", "French")])
    assert list(delta.weights) == [lm.down_proj_weight_name(0)]
    with applied(lm, delta):
        pass


def test_a_setting_or_a_shipped_file_wins_over_the_depth_rule(models):
    lm = models[12]
    assert get_editor("rome", lm, layer=7).config.layer == 7
    assert get_editor("memit", lm, sets=["layers=[5, 6]"]).config.layers == (5, 6)
    # SmolLM2's shipped files (resources/configs/*/smollm2.yaml), whatever depth is passed.
    for depth in (None, 30, 12):
        assert resolve_editor("rome", "smollm2", n_layers=depth)[1].layer == 2
        assert resolve_editor("memit", "smollm2", n_layers=depth)[1].layers == (2, 3, 4, 5, 6)
        assert resolve_editor("ft-l", "smollm2", n_layers=depth)[1].layers == (2,)
        assert resolve_editor("rome+rep", "smollm2", n_layers=depth)[1].layer == 2
    # Without a shipped file: the rule at SmolLM2's depth would have been layer 5 and 4-8.
    assert resolve_editor("rome", "no-such-model", n_layers=30)[1].layer == 5


def test_editors_without_an_indexed_layer_have_no_rule():
    assert depth_defaults("mend", 2) == {} and depth_defaults("serac", 48) == {}
    assert depth_defaults("rome", None) == {}  # depth unknown: the dataclass defaults


def test_the_depth_is_read_from_the_model_files_before_loading(tiny_model_dir, tmp_path):
    assert model_depth(str(tiny_model_dir)) == 3
    assert model_depth("smollm2") == 30 and model_depth("gemma3-270m") == 18
    assert model_depth("no-such-model") is None and model_depth(str(tmp_path)) is None
    nested = tmp_path / "multimodal"
    nested.mkdir()
    (nested / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": {"num_hidden_layers": 26}}))
    assert model_depth(str(nested)) == 26
    # What a command checks before loading equals what the editor gets after (runs on workers record it).
    _, early = resolve_editor("memit", str(tiny_model_dir))
    assert early.layers == memit_layers_for_depth(3)
