"""EasyEdit hparams files as --config: translated where the keys map, refused with the list otherwise."""

from __future__ import annotations

import pytest
import yaml

from robustedit.editors.easyedit import from_easyedit, is_easyedit
from robustedit.errors import UserError

# EasyEdit's hparams/ROME/gpt2-xl.yaml and hparams/MEMIT/gpt2-xl.yaml, verbatim
ROME = """alg_name: "ROME"
model_name: "./hugging_cache/gpt2-xl"
stats_dir: "./data/stats"
device: 0
layers: [17]
fact_token: "subject_last"
v_num_grad_steps: 20
v_lr: 5e-1
v_loss_layer: 47
v_weight_decay: 0.5
clamp_norm_factor: 4
kl_factor: 0.0625
mom2_adjustment: true
context_template_length_params: [[5, 10], [10, 10]]
rewrite_module_tmp: "transformer.h.{}.mlp.c_proj"
layer_module_tmp: "transformer.h.{}"
mlp_module_tmp: "transformer.h.{}.mlp"
attn_module_tmp: "transformer.h.{}.attn"
ln_f_module: "transformer.ln_f"
lm_head_module: "transformer.wte"
mom2_dataset: "wikipedia"
mom2_n_samples: 100000
mom2_dtype: "float32"
"""
MEMIT = """alg_name: "MEMIT"
model_name: "./hugging_cache/gpt2-xl"
layers: [13, 14, 15, 16, 17]
clamp_norm_factor: 0.75
layer_selection: "all"
fact_token: "subject_last"
v_num_grad_steps: 20
v_lr: 5e-1
v_loss_layer: 47
v_weight_decay: 0.5
kl_factor: 0.0625
mom2_adjustment: true
mom2_update_weight: 20000
"""


def test_an_easyedit_rome_file_maps_to_our_settings():
    settings = yaml.safe_load(ROME)
    assert is_easyedit(settings)
    # YAML 1.1 reads 5e-1 as text; the config coerces it (test_easyedit_files_go_through_config)
    assert from_easyedit(settings, "rome", None, "rome.yaml") == {
        "layer": 17, "v_num_grad_steps": 20, "v_lr": "5e-1", "v_weight_decay": 0.5, "clamp_norm_factor": 4,
        "kl_factor": 0.0625, "context_template_length_params": [[5, 10], [10, 10]]}


def test_an_add_on_takes_its_base_editors_file():
    assert from_easyedit(yaml.safe_load(MEMIT), "memit+rep", "memit", "m.yaml")["layers"] == [13, 14, 15, 16, 17]


def test_unmappable_keys_are_listed_and_nothing_is_half_applied():
    settings = {**yaml.safe_load(ROME), "fact_token": "last", "layers": [3, 4], "new_knob": 1}
    with pytest.raises(UserError) as e:
        from_easyedit(settings, "rome", None, "x.yaml")
    message = str(e.value)
    for key in ("fact_token", "layers", "new_knob"):
        assert key in message


def test_a_file_for_another_editor_is_refused():
    with pytest.raises(UserError, match="not settings for rome"):
        from_easyedit(yaml.safe_load(MEMIT), "rome", None, "m.yaml")
    with pytest.raises(UserError, match="translates EasyEdit files for"):
        from_easyedit({"alg_name": "GRACE"}, "rome", None, "g.yaml")


def test_easyedit_files_go_through_config(tmp_path):
    from robustedit.editors.settings import resolve_editor

    path = tmp_path / "gpt2-xl.yaml"
    path.write_text(MEMIT)
    _, config = resolve_editor("memit", "some-model", str(path))
    assert config.layers == (13, 14, 15, 16, 17) and config.mom2_update_weight == 20000 and config.v_lr == 0.5
