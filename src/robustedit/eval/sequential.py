"""Sequential editing: N edits applied one after another (B facts per ``edit`` call), never rolled
back, the way a deployed model accumulates corrections (SSS paper §7.3, Table 2; AlphaEdit §5).

At each checkpoint (by default after 1, 10, 100, 1000, … edits and after the last) every fact
edited so far is scored on the model as it is *then*, against its scores on the unedited model,
and the general-ability probe (``eval.ability``) is measured. The last checkpoint's per-case
scores are the run's ``records.jsonl``, so ``summary.json`` holds the metrics after all N edits;
the curve is ``checkpoints.jsonl`` + ``sequential.png``; each ``edit`` call is a line of
``edits.jsonl``; the edited weights are saved in ``edits/`` (``editors.store``), undoable exactly.

A sequential run is not resumable: the model state after k edits would have to be restored with
the editor's memory of them (AlphaEdit's preserved keys); an existing results folder is refused.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

from robustedit.data import Case
from robustedit.editors.base import Editor
from robustedit.editors.store import EditSequence
from robustedit.errors import UserError
from robustedit.eval.ability import AbilityProbe
from robustedit.eval.metrics import case_metrics, score_case
from robustedit.eval.report import write_sequential_plot, write_summary
from robustedit.eval.runner import RunInfo, case_record, summarize
from robustedit.progress import progress
from robustedit.rundir import writer_lock

log = logging.getLogger(__name__)


PROBE_CASES = 50  # cases after the edited ones whose neighbour prompts probe unrelated drift


@dataclass(frozen=True)
class SequentialPlan:
    n: int  # edits in total
    batch_size: int = 1  # facts per edit call
    checkpoints: tuple[int, ...] = ()  # edit counts at which to score; () = 1, 10, 100, … and n

    def __post_init__(self) -> None:
        if self.n < 1 or self.batch_size < 1:
            raise UserError("--sequential and --batch-size must be at least 1")
        if self.batch_size > self.n:
            raise UserError(f"--batch-size {self.batch_size} is larger than --sequential {self.n}")

    def checkpoint_set(self) -> list[int]:
        """Checkpoints rounded up to whole batches (the model is only ever seen between calls)."""
        wanted = self.checkpoints or tuple(10**i for i in range(len(str(self.n))))
        B = self.batch_size
        return sorted({min(self.n, -(-c // B) * B) for c in wanted if c >= 1} | {self.n})


def _append(path: Path, obj: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_sequential(editor: Editor, cases: list[Case], probe_cases: list[Case], out_dir: Path, run: RunInfo,
                   plan: SequentialPlan, *, save_edits: bool = True) -> dict:
    """Edit ``cases[:plan.n]`` in order without rollback; the model is restored before returning."""
    out_dir = Path(out_dir)
    if (out_dir / "records.jsonl").exists() or (out_dir / "checkpoints.jsonl").exists():
        raise UserError(f"{out_dir} already holds results (sequential runs cannot be resumed); choose another --out")
    if len(cases) < plan.n:
        raise UserError(f"--sequential {plan.n} needs {plan.n} cases; the dataset has {len(cases)}")
    with writer_lock(out_dir):
        return _run_sequential(editor, cases, probe_cases, out_dir, run, plan, save_edits)


def _run_sequential(editor: Editor, cases: list[Case], probe_cases: list[Case], out_dir: Path, run: RunInfo,
                    plan: SequentialPlan, save_edits: bool) -> dict:
    lm, cases = editor.lm, cases[: plan.n]
    t0 = time.perf_counter()
    editor.prepare()
    prepare_s = time.perf_counter() - t0
    pre = [score_case(lm, c) for c in progress(cases, desc="scoring the unedited model")]
    probe = AbilityProbe.build(lm, [p for c in probe_cases for p in c.neighborhood_prompts])
    checkpoints = plan.checkpoint_set()
    points = [{"n_edits": 0, "metrics": {}, **probe.unedited(), "elapsed_s": 0.0}]
    _append(out_dir / "checkpoints.jsonl", points[0])

    sequence = EditSequence(lm)
    edit_s: list[float] = []
    started = time.perf_counter()
    try:
        batches = range(0, plan.n, plan.batch_size)
        for step, start in enumerate(progress(batches, desc=f"sequential {run.editor}")):
            batch = cases[start : start + plan.batch_size]
            t0 = time.perf_counter()
            delta = editor.edit([c.request for c in batch])
            seconds = time.perf_counter() - t0
            sequence.apply(delta, [c.request for c in batch], [c.case_id for c in batch])
            editor.commit(delta)
            edit_s += [seconds / len(batch)] * len(batch)
            _append(out_dir / "edits.jsonl", {"step": step, "case_ids": [c.case_id for c in batch],
                                               "edit_s": seconds, "info": delta.info})
            done = start + len(batch)
            if done not in checkpoints:
                continue
            post = [score_case(lm, c) for c in progress(cases[:done], desc=f"scoring {done} edited facts")]
            per_case = [case_metrics(a, b) for a, b in zip(pre, post)]
            names = sorted({k for m in per_case for k in m})
            point = {"n_edits": done, "metrics": {k: fmean(m[k] for m in per_case if k in m) for k in names},
                     **probe.measure(lm), "elapsed_s": time.perf_counter() - started}
            points.append(point)
            _append(out_dir / "checkpoints.jsonl", point)
            if done == plan.n:
                with open(out_dir / "records.jsonl", "w", encoding="utf-8") as f:
                    for i, case in enumerate(cases):
                        f.write(json.dumps(case_record(case, pre[i], post[i], {"step": i // plan.batch_size}, {"edit_s": edit_s[i]})) + "\n")
        if save_edits and sequence.memory:  # SERAC: nothing in the weights to save
            log.warning("edits kept in an edit memory are not saved; edits.jsonl lists the requests, "
                        "which the trained editor turns into the same memory")
        elif save_edits:
            sequence.save(out_dir / "edits", editor.name, run.config)
    finally:
        sequence.undo()
    records = [json.loads(line) for line in (out_dir / "records.jsonl").read_text().splitlines()]
    summary = summarize(records, run, prepare_s)
    summary["sequential"] = {"n": plan.n, "batch_size": plan.batch_size, "checkpoints": points,
                             "probe_prompts": len(probe.prompts), "heldout_tokens": int(probe.windows.numel())}
    write_summary(out_dir, summary)
    write_sequential_plot(out_dir / "sequential.png", {run.editor: points})
    return summary
