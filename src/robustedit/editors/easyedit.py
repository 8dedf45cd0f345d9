"""EasyEdit hparams files (``hparams/ROME/gpt2-xl.yaml`` and the like) read as ``--config``.

A file with EasyEdit's ``alg_name`` key is translated into our settings: the keys that mean the
same thing map (``layers: [17]`` → ROME's ``layer: 17``, ``num_steps`` → FT-L's ``steps``, …);
the keys that only locate things robustedit finds itself (module name templates, model path,
device, statistics folder) are dropped; the key statistics' source (``mom2_dataset``,
``mom2_n_samples``, ``mom2_dtype``: Wikipedia downloaded at run time) is replaced by ours (the
shipped corpus, ``stats.*``, float64 solves) and a warning says so; any other key, or a value we cannot honour, refuses the
whole file with the list of keys it cannot map, so a run never silently differs from the file.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from robustedit.errors import UserError

log = logging.getLogger(__name__)

# Plumbing: robustedit finds these itself (architecture table, device flag, statistics cache).
LOCATING = {"model_name", "device", "stats_dir", "rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp",
            "attn_module_tmp", "ln_f_module", "lm_head_module", "model_parallel", "fp16", "max_length", "alg_name"}
# Where C comes from: replaced by robustedit's own statistics (no download), with a warning.
SUBSTITUTED = {"mom2_dataset", "mom2_n_samples", "mom2_dtype"}

Rule = Callable[[Any], dict]  # EasyEdit value → our settings (nested dict), or UserError-worthy ValueError


def _same(key: str) -> Rule:
    return lambda value: {key: value}


def _one_layer(value: Any) -> dict:
    if not isinstance(value, list) or len(value) != 1:
        raise ValueError("ROME edits one layer: layers must be a one-element list")
    return {"layer": int(value[0])}


def _must_be(expected: Any, why: str) -> Rule:
    def rule(value: Any) -> dict:
        if value != expected:
            raise ValueError(why)
        return {}
    return rule


_VALUE = {"v_num_grad_steps": _same("v_num_grad_steps"), "v_lr": _same("v_lr"),
          "v_weight_decay": _same("v_weight_decay"), "clamp_norm_factor": _same("clamp_norm_factor"),
          "kl_factor": _same("kl_factor"),
          "context_template_length_params": _same("context_template_length_params"),
          "fact_token": _must_be("subject_last", "only the subject's last token is supported as the key position"),
          "mom2_adjustment": _must_be(True, "robustedit always uses the key statistics C (mom2_adjustment: true)"),
          # v_loss_layer is the last layer in every EasyEdit file: the loss is read from the output
          "v_loss_layer": lambda value: {}}

RULES: dict[str, dict[str, Rule]] = {
    "ROME": {"layers": _one_layer, **_VALUE},
    "MEMIT": {"layers": lambda v: {"layers": [int(x) for x in v]}, "mom2_update_weight": _same("mom2_update_weight"),
              "layer_selection": _must_be("all", "only layer_selection: all is supported"), **_VALUE},
    "FT": {"layers": lambda v: {"layers": [int(x) for x in v]}, "num_steps": _same("steps"), "lr": _same("lr"),
           "weight_decay": _same("weight_decay"), "norm_constraint": _same("norm_constraint"),
           "batch_size": _same("batch_size"),
           "kl_factor": _must_be(0, "FT-L here has no KL term (kl_factor must be 0)"),
           "objective_optimization": _must_be("target_new", "FT-L here trains on the whole new target "
                                              "(objective_optimization: target_new), not prompt_last")},
}
EDITOR_OF = {"ROME": "rome", "MEMIT": "memit", "FT": "ft-l"}


def is_easyedit(settings: dict) -> bool:
    return "alg_name" in settings


def from_easyedit(settings: dict, editor: str, base: str | None, source: str) -> dict:
    """Our settings for ``editor`` (whose base editor, for an add-on, is ``base``) from an EasyEdit
    hparams mapping read from ``source``; a UserError listing every key that cannot be mapped."""
    alg = str(settings.get("alg_name"))
    if alg not in RULES:
        raise UserError(f"{source} is an EasyEdit {alg} file; robustedit translates EasyEdit files for "
                        f"{', '.join(RULES)} (give our settings with --set otherwise)")
    if EDITOR_OF[alg] not in (editor, base):
        raise UserError(f"{source} holds EasyEdit {alg} settings, not settings for {editor}")
    out: dict = {}
    problems: list[str] = []
    replaced = sorted(k for k in settings if k in SUBSTITUTED)
    for key, value in settings.items():
        if key in LOCATING or key in SUBSTITUTED:
            continue
        rule = RULES[alg].get(key)
        if rule is None:
            problems.append(f"{key} (no counterpart)")
            continue
        try:
            out.update(rule(value))
        except (ValueError, TypeError) as e:
            problems.append(f"{key}: {value!r} ({e})")
    if problems:
        raise UserError(f"{source}: these EasyEdit {alg} settings cannot be mapped: " + "; ".join(problems))
    if replaced:
        log.warning("%s: %s ignored: the key statistics C come from robustedit's shipped corpus (set stats.n_tokens "
                    "to change their size)", source, ", ".join(replaced))
    return out
