"""Time MEMIT's value optimisation for one call of N facts, with and without skipping the layers
below the edited one (``PrefixCachedBatch.hidden(from_layer=...)``), on the same facts.

    python benchmarks/value_time.py --n 10

Prints seconds per call and the Adam steps each fact took (they must agree between the two ways:
skipping the fixed layers changes nothing but the time).
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import torch

from robustedit.data import load_cases
from robustedit.editors import values
from robustedit.models.load import load_model
from robustedit.models.prefix import PrefixCachedBatch
from robustedit.editors.settings import get_editor


def timed(editor, requests) -> tuple[float, list[int], torch.Tensor]:
    templates_of = [[c.format(r.prompt) for c in editor.context_templates()] for r in requests]
    t0 = time.perf_counter()
    res = values.optimize_values(editor.lm, editor.z_layer, requests, templates_of, editor.config.value,
                                 editor.config.v_batch_size)
    return time.perf_counter() - t0, [r.steps for r in res], torch.stack([r.target for r in res])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--model", default="smollm2")
    args = ap.parse_args()
    lm = load_model(args.model)
    editor = get_editor("memit", lm)
    editor.prepare()
    requests = [c.request for c in load_cases("counterfact-val", limit=args.n)]
    print(f"threads {torch.get_num_threads()}, {args.n} facts, δ at layer {editor.z_layer} of {lm.n_layers}")
    skip_s, skip_steps, skip_z = timed(editor, requests)
    full_hidden = PrefixCachedBatch.hidden
    with mock.patch.object(PrefixCachedBatch, "hidden", lambda self, from_layer=0: full_hidden(self, 0)):
        full_s, full_steps, full_z = timed(editor, requests)
    print(f"all layers every step:      {full_s:6.1f} s  steps {full_steps}")
    print(f"from the edited layer on:   {skip_s:6.1f} s  steps {skip_steps}  ({skip_s / full_s:.2f} of the time)")
    print(f"largest difference in z: {float((skip_z - full_z).abs().max()):.2e}")


if __name__ == "__main__":
    main()
