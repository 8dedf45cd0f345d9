"""The training loop every trained editor shares: steps, validation, checkpoints, resume, the log.

A trainer is a :class:`TrainTask` (what one step does, how to validate, what to export); this
module owns everything around it. Every ``save_every`` steps the trained module, the optimizer
and the random state go to ``OUT/checkpoint.pt`` (written to a temporary file and renamed, so a
kill mid-write leaves the previous checkpoint intact); ``resume=True`` continues from it and the
resumed run sees the same batches as an uninterrupted one (batches are a function of the step
number, :func:`batch_indices`). ``OUT/train_log.jsonl`` gets one line per logged step and per
validation. At the end the task's export is written as a trained editor (``editors/trained.py``).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from robustedit.errors import UserError
from robustedit.progress import progress
from robustedit.output import staged
from robustedit.rundir import on_interrupt, writer_lock
from robustedit.editors.trained import LoopConfig, save_trained  # noqa: F401  (LoopConfig: re-exported)

CHECKPOINT, LOG = "checkpoint.pt", "train_log.jsonl"


class TrainTask(Protocol):
    module: nn.Module  # what is trained, checkpointed and exported
    optimizer: torch.optim.Optimizer

    def train_step(self, step: int) -> dict[str, float]: ...

    def validate(self) -> dict[str, float]: ...

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...


def split_cases(cases: list, val_fraction: float) -> tuple[list, list]:
    """(training, validation): the validation cases are the file's tail, the same for every run."""
    n_val = max(1, round(len(cases) * val_fraction))
    if len(cases) - n_val < 1:
        raise UserError(f"{len(cases)} cases are too few to hold back {n_val} for validation")
    return cases[:-n_val], cases[-n_val:]


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The examples of ``step``: consecutive slices of a fresh permutation of ``range(n)`` per epoch."""
    out = []
    for j in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(j, n)
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(order[pos])
    return out


def run_training(task: TrainTask, out: Path, cfg: LoopConfig, *, meta: dict[str, Any], resume: bool = False,
                 desc: str = "training") -> dict[str, Any]:
    """Train ``task`` for ``cfg.steps`` steps in ``out``; returns the exported editor's metadata."""
    saved = {"step": 0}  # the last checkpoint's step, for the line an interrupt prints

    def kept() -> str:
        return (f"checkpoint at step {saved['step']} in {out}; rerun the same command with --resume to continue"
                if saved["step"] else f"no checkpoint yet (one is written every {cfg.save_every} steps)")

    with writer_lock(out), on_interrupt(kept):
        return _train(task, out, cfg, meta, resume, desc, saved)


def _train(task: TrainTask, out: Path, cfg: LoopConfig, meta: dict[str, Any], resume: bool, desc: str,
           saved: dict[str, int]) -> dict[str, Any]:
    start, elapsed = 0, 0.0
    if resume:
        start, elapsed = _load_checkpoint(task, out, meta)
        saved["step"] = start
    elif (out / CHECKPOINT).exists():
        raise UserError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    _truncate_log(out / LOG, start)
    history: dict[str, float] = {}
    t0 = time.perf_counter() - elapsed
    bar = progress(range(start, cfg.steps), desc=desc, total=cfg.steps - start)
    for step in bar:
        task.module.train()
        losses = task.train_step(step)
        history = {k: 0.9 * history.get(k, v) + 0.1 * v for k, v in losses.items()}  # smoothed for display
        bar.set_postfix({k: f"{v:.3g}" for k, v in list(history.items())[:3]})
        done = step + 1
        if done % cfg.log_every == 0:
            _log(out, {"step": done, "kind": "train", **losses, "elapsed_s": time.perf_counter() - t0})
        if cfg.val_every and done % cfg.val_every == 0 and done < cfg.steps:
            _validate(task, out, done, t0)
        if done % cfg.save_every == 0 or done == cfg.steps:
            _save_checkpoint(task, out, done, time.perf_counter() - t0, meta)
            saved["step"] = done
    final = _validate(task, out, cfg.steps, t0)
    state, export_meta = task.export()
    full = {**meta, **export_meta, "steps": cfg.steps, "train_s": time.perf_counter() - t0, "validation": final}
    save_trained(out, state, full)
    return full


def _validate(task: TrainTask, out: Path, step: int, t0: float) -> dict[str, float]:
    task.module.eval()
    metrics = task.validate()  # not under no_grad: MEND's edits need one backward pass
    _log(out, {"step": step, "kind": "val", **metrics, "elapsed_s": time.perf_counter() - t0})
    return metrics


def _log(out: Path, record: dict) -> None:
    with open(out / LOG, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint a run resumes from, so that none appears twice."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in lines))


def _save_checkpoint(task: TrainTask, out: Path, step: int, elapsed: float, meta: dict) -> None:
    state = {"step": step, "elapsed_s": elapsed, "module": task.module.state_dict(),
             "optimizer": task.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
             "config": meta.get("config")}
    with staged(out / CHECKPOINT) as tmp:
        torch.save(state, tmp)


RESUMABLE_CHANGES = ("steps", "val_every", "save_every", "log_every")  # a resumed run may train longer


def _comparable(config: dict | None) -> dict | None:
    if not config or "train" not in config:
        return config
    return {**config, "train": {k: v for k, v in config["train"].items() if k not in RESUMABLE_CHANGES}}


def _load_checkpoint(task: TrainTask, out: Path, meta: dict) -> tuple[int, float]:
    path = out / CHECKPOINT
    if not path.exists():
        raise UserError(f"--resume: {out} has no {CHECKPOINT} to continue from")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if _comparable(state.get("config")) != _comparable(meta.get("config")):
        raise UserError(f"--resume: {out} was trained with another configuration; use the same --set options "
                        "or start a new --out")
    task.module.load_state_dict(state["module"])
    task.optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), float(state["elapsed_s"])
