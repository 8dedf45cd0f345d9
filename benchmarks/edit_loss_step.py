"""What one training step of FT-L (± SSS) costs, with the logits of the target positions alone
(``TeacherForced.keep``, the library's path) against every position projected onto the vocabulary.

One step = the edit loss J (and the SSS term of a form) on one zsRE training edit, then the
backward into the trained down-projection; the median over ``--repeats`` after one warm-up.

    python benchmarks/edit_loss_step.py --model gemma3-270m
    python benchmarks/edit_loss_step.py --model smollm2 --forms none,paper,reference
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import robustedit.editors.sss as sss_module
from robustedit.data import load_cases
from robustedit.editors.settings import get_editor
from robustedit.editors.sss import SSSConfig, combined_loss, edit_loss_and_sss, teacher_forced
from robustedit.models.load import load_model


def step_seconds(lm, tf, cfg: SSSConfig | None, weight: torch.Tensor, repeats: int) -> float:
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        with torch.enable_grad():
            J, lam = edit_loss_and_sss(lm, tf, cfg)
            combined_loss(J, lam, cfg).backward()
        weight.grad = None
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--forms", default="none,paper,reference")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    lm = load_model(args.model)
    layer = get_editor("ft-l", lm).config.layers[0]
    request = load_cases("zsre-train")[0].request
    tf = teacher_forced(lm, [request.text], [request.target_new])
    weight = dict(lm.model.named_parameters())[lm.down_proj_weight_name(layer)]
    for p in lm.model.parameters():
        p.requires_grad_(False)
    weight.requires_grad_(True)
    kept_forward = sss_module.forward

    def every_position(lm_, weights=None, logits_to_keep=None, **inputs):
        return kept_forward(lm_, weights, **inputs)

    print(f"{lm.name}: one FT-L step on layer {layer}, {tf.batch.input_ids.shape[1]} tokens, "
          f"{len(tf.keep)} target position(s), vocabulary {lm.model.config.vocab_size}, "
          f"{torch.get_num_threads()} thread(s)")
    print("| SSS | every position (s) | target positions (s) | speed-up |\n|---|---|---|---|")
    try:
        for form in args.forms.split(","):
            cfg = None if form == "none" else SSSConfig(coefficient=0.5, form=form)
            sss_module.forward = every_position
            full = step_seconds(lm, tf, cfg, weight, args.repeats)
            sss_module.forward = kept_forward
            kept = step_seconds(lm, tf, cfg, weight, args.repeats)
            print(f"| {form} | {full:.3f} | {kept:.3f} | {full / kept:.2f}× |")
    finally:
        sss_module.forward = kept_forward
        weight.requires_grad_(False)


if __name__ == "__main__":
    main()
