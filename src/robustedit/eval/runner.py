"""The evaluation loop: edit each case from the unedited model, score it, write it down at once.

Editors only edit; everything else lives here. An `Evaluator` turns cases into records
(`LocalEvaluator` in this process, ``eval.distributed.RayEvaluator`` over Ray workers) and
`run_evaluation` is the one writer: ``records.jsonl`` gets one line per finished case (flushed and
fsynced) in the order cases finish, so a killed run loses at most the cases in flight and
``resume=True`` continues with the cases not yet written. Each case is evaluated with the random
state seeded from (seed, case id) alone, so its record does not depend on which cases ran before
it, in which process: sharded, resumed and uninterrupted runs write the same records. The
summary is rebuilt from the records file, never from memory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

from robustedit.data import Case
from robustedit.editors.base import Editor, applied
from robustedit.errors import UserError
from robustedit.eval.generation import GenerationConfig
from robustedit.eval.metrics import case_metrics, pre_edit_facts, score_case
from robustedit.eval.report import write_summary
from robustedit.data.perturb import RobustnessConfig, case_rng, in_domain, robustness_probes
from robustedit.progress import progress
from robustedit.output import atomic_write
from robustedit.rundir import check_same_run, on_interrupt, writer_lock

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    """What the summary says about the run besides its metrics."""

    editor: str
    model: str
    dataset: str
    config: dict
    command: str = ""
    seed: int = 0
    extra: dict = field(default_factory=dict)
    fingerprint: str | None = None  # the model's weights (LanguageModel.fingerprint), when known
    dtype: str | None = None  # the model's, as loaded (summary.json's "environment")
    device: str | None = None

    def settings(self) -> dict:
        """What a resume must match: records made otherwise would be mixed with these."""
        extra = {k: v for k, v in self.extra.items() if k != "workers"}  # how many workers: not the results
        return {"editor": self.editor, "model": self.model, "fingerprint": self.fingerprint,
                "dataset": self.dataset, "config": self.config, "seed": self.seed, "extra": extra}


def read_records(path: Path) -> list[dict]:
    """Complete records of a (possibly interrupted) run; a torn last line is dropped."""
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # the run was killed while writing this line
    return records


def _rewrite_records(path: Path, records: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))


@dataclass(frozen=True)
class EvalOptions:
    """What is scored besides the case's own prompts, and the seed of each case's random state."""

    robustness: RobustnessConfig | None = None
    seed: int = 0
    generation: GenerationConfig | None = None  # ROME's fluency and consistency (eval.generation); slow


def seed_case(seed: int, case_id: str) -> None:
    """Seed every generator from (seed, case id) only: a case's record is the same in any order."""
    from robustedit.seeding import seed_everything

    seed_everything(case_rng(seed, case_id, "evaluate").getrandbits(32))


def evaluate_case(editor: Editor, case: Case, options: EvalOptions = EvalOptions(),
                  pre_scores: dict | None = None) -> dict:
    """Score ``case`` before and after its edit; with ``options.robustness``, its robustness probes
    too (``data.perturb``); with ``options.generation``, texts generated about the subject.
    ``pre_scores`` (case id → scores) keeps the unedited model's scores for the next editor that
    evaluates the same case on the same model with the same options (``LocalEvaluator``)."""
    lm, robustness = editor.lm, options.robustness
    probes = robustness_probes(case, lm.tokenizer, robustness) if robustness else None
    t0 = time.perf_counter()
    if pre_scores is not None and case.case_id in pre_scores:
        pre = pre_scores[case.case_id]
    else:
        pre = score_case(lm, case, probes)
        if pre_scores is not None:
            pre_scores[case.case_id] = pre
    t1 = time.perf_counter()
    references = _references(lm, case, options.generation)
    t_ref = time.perf_counter()
    request = case.request
    if probes is not None and getattr(editor, "wants_in_domain", False):  # REP trains on their keys
        request = dataclasses.replace(request, in_domain=in_domain(probes))
    delta = editor.edit([request])
    t2 = time.perf_counter()
    with applied(lm, delta):
        post = score_case(lm, case, probes)
        t3 = time.perf_counter()
        generated = _generate(lm, case, options.generation, references)
    t4 = time.perf_counter()
    info = dict(delta.info)
    timing = {"edit_s": t2 - t_ref, "eval_s": (t1 - t0) + (t3 - t2), **info.pop("timing", {})}
    if options.generation is not None:
        timing["generation_s"] = (t_ref - t1) + (t4 - t3)
    if generated is not None:
        post["generation"] = generated["scores"]
    record = case_record(case, pre, post, info, timing)
    if generated is not None:
        record["generation"] = generated["texts"]
    return record


def _references(lm, case: Case, config: GenerationConfig | None):
    """The unedited model's reference texts about target_new (``eval.generation``), or None."""
    from robustedit.eval.generation import reference_texts

    return reference_texts(lm, case, config) if config is not None and case.generation_prompts else None


def _generate(lm, case: Case, config: GenerationConfig | None, references: list[str] | None) -> dict | None:
    """Texts the edited model writes about the subject and their scores (``eval.metrics``)."""
    from robustedit.eval.generation import GenerationScores, consistency_score, generation_scores

    result = generation_scores(lm, case, config) if config is not None else None
    if result is None:
        return None
    consistency = consistency_score(result["texts"], references) if references else None
    return {"scores": GenerationScores(result["entropy"], consistency),
            "texts": {"texts": result["texts"], "reference_texts": references or []}}


def case_record(case: Case, pre, post, edit: dict, timing: dict) -> dict:
    """One line of ``records.jsonl``: the case, its metrics (post vs pre scores), what the
    unedited model believed, the edit's diagnostics and timing."""
    r = case.request
    return {
        "case_id": case.case_id,
        "subject": r.subject,
        "prompt": r.prompt,
        "target_new": r.target_new,
        "target_true": r.target_true,
        "metrics": case_metrics(pre, post),
        "pre": pre_edit_facts(pre),
        "edit": edit,
        "timing": timing,
    }


class Evaluator(Protocol):
    """Turns cases into records; ``records`` yields them as cases finish, in any order."""

    def prepare(self) -> None: ...

    def records(self, cases: list[Case]) -> Iterator[dict]: ...


class LocalEvaluator:
    """Evaluates cases one after another with one editor in this process. Several evaluators of
    one model and one ``options`` (e.g. the rows of a table) may share ``pre_scores``, so that each
    case is scored on the unedited model once: every editor restores the weights exactly."""

    def __init__(self, editor: Editor, options: EvalOptions = EvalOptions(), pre_scores: dict | None = None):
        self.editor, self.options, self.pre_scores = editor, options, pre_scores

    def prepare(self) -> None:
        if self.options.robustness is not None:
            self.options.robustness.check_fits(self.editor.lm.max_positions, self.editor.lm.name)
        self.editor.prepare()

    def records(self, cases: list[Case]) -> Iterator[dict]:
        for case in cases:
            seed_case(self.options.seed, case.case_id)
            yield evaluate_case(self.editor, case, self.options, self.pre_scores)


def run_evaluation(editor: Editor | Evaluator, cases: list[Case], out_dir: Path, run: RunInfo, *,
                   resume: bool = False, show_progress: bool = True,
                   robustness: RobustnessConfig | None = None) -> dict:
    """Evaluate the cases not yet in ``out_dir/records.jsonl`` and write the summary files.

    ``editor`` is an `Editor` (evaluated here, seeded from ``run.seed``, with ``robustness``) or
    any `Evaluator`, e.g. Ray workers."""
    if hasattr(editor, "records"):
        if robustness is not None:  # an Evaluator carries its own options
            raise ValueError("pass robustness in the evaluator's EvalOptions, not to run_evaluation")
        evaluator = editor
    else:
        evaluator = LocalEvaluator(editor, EvalOptions(robustness, run.seed))
    out_dir = Path(out_dir)
    records_path = out_dir / "records.jsonl"
    if records_path.exists() and not resume:
        raise UserError(f"{out_dir} already holds results; pass --resume to continue it or choose another --out")
    with writer_lock(out_dir), on_interrupt(lambda: _kept(records_path)):
        check_same_run(out_dir, run.settings(), resume=resume)
        return _evaluate_into(evaluator, cases, out_dir, run, show_progress)


def _kept(records_path: Path) -> str:
    n = len(read_records(records_path))
    return (f"{n} finished case(s) kept in {records_path}; rerun the same command with --resume to continue"
            if n else f"no case had finished; {records_path.parent} holds no records")


def _evaluate_into(evaluator: Evaluator, cases: list[Case], out_dir: Path, run: RunInfo, show_progress: bool) -> dict:
    records_path = out_dir / "records.jsonl"
    done = read_records(records_path)
    done_ids = {r["case_id"] for r in done}
    if len(done_ids) < len(done):
        twice = sorted(c for c, n in Counter(r["case_id"] for r in done).items() if n > 1)
        raise UserError(f"{records_path} holds {len(done) - len(done_ids)} duplicate record(s) (case ids "
                        f"{', '.join(twice[:5])}{', …' if len(twice) > 5 else ''}): it was written by two runs at once; "
                        "start again in a new --out")
    if done:
        _rewrite_records(records_path, done)  # drop a torn last line before appending
    todo = [c for c in cases if c.case_id not in done_ids]
    if done:
        log.info("resuming: %d cases done, %d to go", len(done), len(todo))
    t0 = time.perf_counter()
    evaluator.prepare()
    prepare_s = time.perf_counter() - t0
    with open(records_path, "a", encoding="utf-8") as f:
        for record in progress(evaluator.records(todo), desc=f"evaluating {run.editor}", total=len(todo),
                               disable=not show_progress):
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    wanted = {c.case_id for c in cases}
    records = [r for r in read_records(records_path) if r["case_id"] in wanted]
    summary = summarize(records, run, prepare_s)
    write_summary(out_dir, summary)
    return summary


def summarize(records: list[dict], run: RunInfo, prepare_s: float | None = None) -> dict:
    names = sorted({k for r in records for k in r["metrics"]})
    metrics = {n: statistics.fmean(r["metrics"][n] for r in records if n in r["metrics"]) for n in names}
    timing: dict[str, float] = {}
    phases = sorted({k for r in records for k in r["timing"]})
    for phase in phases:
        values = [r["timing"][phase] for r in records if phase in r["timing"]]
        timing[phase.replace("_s", "_s_median") if phase.endswith("_s") else phase + "_median"] = statistics.median(values)
    if prepare_s is not None:
        timing["prepare_s"] = prepare_s
    known = [r["pre"].get("true_top1") for r in records if "true_top1" in r.get("pre", {})]
    took = [r["metrics"]["efficacy_top1"] for r in records if "efficacy_top1" in r["metrics"]]
    converged = [c["converged"] for r in records for c in _convergence(r.get("edit", {}))]
    return {
        "editor": run.editor,
        "model": run.model,
        "dataset": run.dataset,
        "n_cases": len(records),
        "config": run.config,
        "metrics": metrics,
        "timing": timing,
        "pre_edit": {"true_top1": statistics.fmean(known)} if known else {},
        # edits after which the new target is not the top-1 prediction: counted, never hidden in a mean
        **({"edits_not_taken": sum(1 for t in took if t < 1)} if took else {}),
        **({"edits_not_converged": converged.count(False)} if converged else {}),
        "command": run.command,
        "seed": run.seed,
        "environment": environment(run),
        **run.extra,
    }


def _convergence(edit: dict) -> list[dict]:
    """An edit's convergence entries (``Delta.info["convergence"]``: one dict, or one per request)."""
    found = edit.get("convergence")
    return [found] if isinstance(found, dict) else list(found or [])


PACKAGES = ("torch", "transformers", "safetensors", "numpy", "tokenizers")


def environment(run: RunInfo) -> dict:
    """What made the numbers besides the settings: package versions, dtype and device."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from robustedit import __version__

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"robustedit": __version__, "python": platform.python_version(),
            **{name: installed(name) for name in PACKAGES},
            **({"dtype": run.dtype} if run.dtype else {}), **({"device": run.device} if run.device else {})}
