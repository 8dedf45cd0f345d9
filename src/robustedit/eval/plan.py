"""One evaluation, described and checked before anything loads, then run here, on Ray workers or
in sequence: what ``robustedit evaluate`` does, reachable from Python.

>>> plan = EvalPlan("rome", "counterfact", limit=5, out=Path("runs/rome-5"))
>>> summary = plan.run()                         # records.jsonl, summary.json, summary.md in out

:meth:`EvalPlan.validate` refuses contradictory settings with one line each (the CLI's flag names,
since that is where most plans come from); :meth:`EvalPlan.run` validates, loads the cases, checks
the editor's settings, loads the model (unless Ray workers will), applies the known-case filter and
hands over to ``run_evaluation`` (case by case) or ``run_sequential`` (without rollback).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from robustedit.errors import UserError
from robustedit.eval.sequential import PROBE_CASES, SequentialPlan
from robustedit.rundir import check_output_folder


@dataclass
class EvalPlan:
    editor: str
    dataset: str  # bundled name or a JSON / JSONL file
    model: str = "smollm2"
    config: str | None = None  # YAML file or bundled preset
    sets: tuple[str, ...] = ()  # "key=value" overrides
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    limit: int | None = None
    out: Path | None = None  # default runs/<editor>-<dataset>-<time>
    resume: bool = False
    robustness: bool | None = None  # None: on when the data has subject rephrasings or the editor is REP
    known_only: bool = False
    generation: bool = False
    sequential: int | None = None  # edit the first N cases one after another, no rollback
    batch_size: int = 1
    checkpoints: tuple[int, ...] = ()
    save_edits: bool = True
    workers: int | None = None  # Ray workers
    address: str | None = None
    worker_threads: int = 1
    worker_gpus: float = 0  # GPUs Ray reserves for each worker (fractions share a GPU); needs --device cuda
    command: str = ""  # the command line that made the run (recorded in its files)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # filled by run()

    def validate(self) -> SequentialPlan | None:
        """Refuse contradictory settings; returns the sequential plan, if any."""
        if self.limit is not None and self.limit < 1:
            raise UserError("--limit must be at least 1")
        if self.resume and self.out is None:
            raise UserError("--resume needs the --out folder of the run to continue")
        if self.out is not None and (Path(self.out) / "records.jsonl").exists() and not self.resume:
            raise UserError(f"{self.out} already holds results; pass --resume to continue it or choose another --out")
        if self.out is not None:
            check_output_folder(Path(self.out))
        if self.workers is not None and (self.workers < 1 or self.worker_threads < 1):
            raise UserError("--workers and --worker-threads must be at least 1")
        if self.workers is None and (self.address is not None or self.worker_threads != 1 or self.worker_gpus != 0):
            raise UserError("--address, --worker-threads and --worker-gpus only apply with --workers N")
        if self.workers is not None:
            self._check_worker_gpus()
        return self._sequential_plan()

    def _check_worker_gpus(self) -> None:
        """GPUs per worker agree with the device: Ray hands each worker that asks for GPUs its own
        (``CUDA_VISIBLE_DEVICES``), and leaves the GPUs of a worker that asks for none unaccounted."""
        from robustedit.eval.distributed import check_worker_gpus

        check_worker_gpus(self.worker_gpus)
        cuda = self.device.startswith("cuda")
        if self.worker_gpus > 0 and not cuda:
            raise UserError(f"--worker-gpus {self.worker_gpus:g} reserves GPUs for workers that would run on "
                            f"--device {self.device}; add --device cuda")
        if cuda and self.worker_gpus == 0:
            raise UserError("--device cuda with --workers needs --worker-gpus (GPUs per worker: 1, or 0.5 for two "
                            "workers per GPU), so that Ray gives each worker its GPU")
        if cuda and self.device != "cuda":
            raise UserError(f"with --workers, Ray chooses each worker's GPU: use --device cuda, not {self.device}")

    def _sequential_plan(self) -> SequentialPlan | None:
        n = self.sequential
        if n is None:
            if self.batch_size != 1 or self.checkpoints:
                raise UserError("--batch-size and --checkpoints only apply with --sequential N")
            return None
        if self.resume:
            raise UserError("sequential runs cannot be resumed; start again with a new --out")
        if self.limit is not None:
            raise UserError("--sequential N already chooses the first N cases; drop --limit")
        if self.robustness or self.known_only or self.workers or self.generation:
            raise UserError("--robustness, --known-only, --generation and --workers apply to case-by-case runs, not to --sequential")
        if any(c < 1 or c > n for c in self.checkpoints):
            raise UserError(f"--checkpoints must lie between 1 and --sequential {n}")
        return SequentialPlan(n, self.batch_size, tuple(self.checkpoints))

    def run(self, lm=None, say: Callable[[str], None] = print) -> dict:
        """Validate and run; returns the summary (also written to ``self.out``, set here if unset).
        ``lm``: an already loaded model to use instead of loading ``self.model``."""
        from robustedit.data import load_cases
        from robustedit.editors.settings import resolve_editor
        from robustedit.data.perturb import RobustnessConfig
        from robustedit.models.load import load_seeded

        plan = self.validate()
        cases = load_cases(self.dataset, limit=None if plan or self.known_only else self.limit)
        robustness = self.robustness
        if robustness is None:  # REP trains on the in-domain probes, so its runs score them too
            robustness = plan is None and (any(c.subject_rephrases for c in cases) or self.editor.endswith("+rep"))
        _, config = resolve_editor(self.editor, self.model, self.config, self.sets)  # fails before the load
        name = Path(self.dataset).stem if self.dataset.endswith((".json", ".jsonl")) else self.dataset
        self.out = Path(self.out) if self.out else Path("runs") / f"{self.editor}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        rob = RobustnessConfig() if robustness else None
        extra: dict = {"robustness": asdict(rob)} if rob is not None else {}
        gen = self._generation_config(cases, extra)
        if lm is None and (self.workers is None or self.known_only):
            lm = load_seeded(self.model, self.dtype, self.device, self.seed)
        if self.known_only:
            cases = self._known(lm, cases, extra, say)
        self.extra = extra
        if self.workers is not None:
            return self._run_on_workers(cases, config, rob, gen)
        return self._run_here(lm, cases, rob, gen, plan)

    def _generation_config(self, cases, extra: dict):
        if not self.generation:
            return None
        from robustedit.eval.generation import GenerationConfig

        if not any(c.generation_prompts for c in cases):
            raise UserError(f"--generation needs generation prompts, which {self.dataset} does not have "
                            "(CounterFact's original schema does)")
        gen = GenerationConfig(seed=self.seed)
        extra["generation"] = asdict(gen)
        return gen

    def _known(self, lm, cases, extra: dict, say):
        from robustedit.eval.filters import known_cases

        kept = known_cases(lm, cases)
        extra["filter"] = {"known_only": True, "loaded": len(cases), "known": len(kept)}
        say(f"--known-only: the model knows {len(kept)} of {len(cases)} cases")
        if not kept:
            raise UserError(f"the model knows none of the {len(cases)} cases of {self.dataset}; drop --known-only")
        return kept[: self.limit] if self.limit else kept

    def _run_on_workers(self, cases, config, rob, gen) -> dict:
        """The workers build the editor; this process only writes the results."""
        from robustedit.eval.distributed import RayEvaluator
        from robustedit.eval.runner import EvalOptions, RunInfo, run_evaluation
        from robustedit.eval.distributed import EditorSpec

        local = Path(self.model).expanduser()  # workers may start in another folder: paths travel absolute
        spec = EditorSpec(self.editor, str(local.resolve()) if local.is_dir() else self.model,
                          str(Path(self.config).resolve()) if self.config and Path(self.config).is_file() else self.config,
                          tuple(self.sets), self.dtype, self.device, self.seed)
        self.extra["workers"] = {"n": self.workers, "threads": self.worker_threads, "address": self.address}
        if self.worker_gpus:
            self.extra["workers"]["gpus"] = self.worker_gpus
        run = RunInfo(editor=self.editor, model=self.model, dataset=self.dataset, config=asdict(config),
                      seed=self.seed, command=self.command, extra=self.extra, dtype=self.dtype, device=self.device)
        with RayEvaluator(spec, EvalOptions(rob, self.seed, gen), self.workers, address=self.address,
                          threads=self.worker_threads, worker_gpus=self.worker_gpus) as evaluator:
            return run_evaluation(evaluator, cases, self.out, run, resume=self.resume)

    def _run_here(self, lm, cases, rob, gen, plan: SequentialPlan | None) -> dict:
        from robustedit.editors.settings import get_editor
        from robustedit.eval.runner import EvalOptions, LocalEvaluator, RunInfo, run_evaluation
        from robustedit.eval.sequential import run_sequential

        editor = get_editor(self.editor, lm, config=self.config, sets=self.sets)
        run = RunInfo(editor=self.editor, model=lm.name, dataset=self.dataset, config=editor.settings(),
                      seed=self.seed, command=self.command, extra=self.extra, fingerprint=lm.fingerprint,
                      dtype=str(lm.dtype).removeprefix("torch."), device=str(lm.device))
        if plan is None:
            return run_evaluation(LocalEvaluator(editor, EvalOptions(rob, self.seed, gen)), cases, self.out, run,
                                  resume=self.resume)
        edited, probe = cases[: plan.n], cases[plan.n : plan.n + PROBE_CASES]  # probe: facts never edited
        return run_sequential(editor, edited, probe, self.out, run, plan, save_edits=self.save_edits)
