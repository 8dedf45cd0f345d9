"""What every ``robustedit reproduce NAME`` experiment shares: its options, their checks, and
"a variant that already finished in this --out is read back, one cut short starts over".

An experiment declares what it is (name, help, variants, which options apply to it) and writes
only its own ``run``; :meth:`Experiment.__call__` refuses options that do not apply, before the
model loads, with one line naming what does.
"""

from __future__ import annotations

import abc
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

from robustedit.errors import UserError


@dataclass(frozen=True)
class Options:
    """What ``robustedit reproduce`` passes to an experiment (its flags, unchanged)."""

    out: Path | None = None
    model: str = "smollm2"
    config: str | None = None
    sets: tuple[str, ...] = ()
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    limit: int | None = None
    only: tuple[str, ...] = ()
    dataset: str | None = None
    known_only: bool = True

    @property
    def command(self) -> str:
        return "robustedit " + shlex.join(sys.argv[1:])

    def load_model(self):
        from robustedit.models.load import load_seeded

        return load_seeded(self.model, self.dtype, self.device, self.seed)


class Experiment(abc.ABC):
    name: ClassVar[str]
    help: ClassVar[str]
    variants: ClassVar[tuple[str, ...]]  # what --only picks from
    default_variants: ClassVar[tuple[str, ...] | None] = None  # run without --only (default: all variants)
    datasets: ClassVar[tuple[str, ...] | None] = ()  # what --dataset takes: () nothing, None any file
    default_dataset: ClassVar[str | None] = None  # named in the error when --dataset does not apply
    takes_config: ClassVar[bool] = False  # several editors: settings go through --set, not one --config
    takes_all_cases: ClassVar[bool] = False  # only experiments that filter by known facts take --all-cases

    def __call__(self, options: Options) -> dict:
        self.check(options)
        out = Path(options.out or f"runs/reproduce-{self.name}")
        return self.run(options, out, list(options.only or self.default_variants or self.variants))

    def check(self, options: Options) -> None:
        """Refuse options that do not apply to this experiment (nothing has loaded yet)."""
        if options.config is not None and not self.takes_config:
            raise UserError(f"reproduce {self.name} runs several editors; set hyperparameters with --set instead of --config")
        if options.dataset is not None and self.datasets == ():
            where = f"always runs on {self.default_dataset}" if self.default_dataset else "chooses its own data"
            raise UserError(f"reproduce {self.name} {where}; --dataset does not apply")
        if options.dataset is not None and self.datasets and options.dataset not in self.datasets:
            raise UserError(f"reproduce {self.name} runs on {', '.join(self.datasets)}; --dataset picks one of them, "
                            f"not {options.dataset!r}")
        if not options.known_only and not self.takes_all_cases:
            raise UserError(f"--all-cases applies to rep-table; reproduce {self.name} filters no cases by what the model knows")
        unknown = [v for v in options.only if v not in self.variants]
        if unknown:
            raise UserError(f"unknown variant(s) {', '.join(unknown)} of {self.name}; choose from {', '.join(self.variants)}")
        if options.limit is not None and options.limit < 1:
            raise UserError("--limit must be at least 1")

    @abc.abstractmethod
    def run(self, options: Options, out: Path, variants: list[str]) -> dict:
        """Run ``variants`` into ``out`` and write the experiment's tables and plots; returns its results."""


def finished(folder: Path, leftovers: tuple[str, ...] = ("records.jsonl",),
             accept: Callable[[dict], bool] = lambda summary: True) -> dict | None:
    """The summary of a variant that finished in an earlier run of this ``--out`` (and that
    ``accept`` takes), else None, after deleting what a run cut short left, so it starts over."""
    summary_path = folder / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if accept(summary):
            return summary
    for name in leftovers:
        (folder / name).unlink(missing_ok=True)
    return None


def made_with(folder: Path, info) -> bool:
    """Whether ``folder``'s results were made with ``info``'s settings (its ``run.json``; a folder
    written before run.json existed: the editor and config its summary records)."""
    from robustedit.rundir import run_differences

    differences = run_differences(folder, info.settings())
    if differences is not None:
        return differences == []
    summary_path = folder / "summary.json"
    if not summary_path.exists():
        return False
    summary = json.loads(summary_path.read_text())
    return summary.get("editor") == info.editor and summary.get("config") == json.loads(json.dumps(info.config, default=str))


def evaluate_variant(lm, editor: str, sets: list[str], dataset: str, cases, folder: Path, options: Options,
                     accept: Callable[[dict], bool] = lambda summary: True) -> dict:
    """Evaluate ``editor`` (with ``sets``) case by case into ``folder``, unless it finished there
    already with the same settings (and ``accept`` takes its summary); a run with the same
    settings that was cut short, or made on fewer cases (``--limit``), continues with the cases it
    lacks; anything made otherwise (e.g. before a shipped default changed) starts over."""
    from robustedit.editors.settings import get_editor
    from robustedit.eval.runner import RunInfo, run_evaluation

    ed = get_editor(editor, lm, sets=sets)
    info = RunInfo(editor, lm.name, dataset, ed.settings(), seed=options.seed, command=options.command,
                   fingerprint=lm.fingerprint)
    same = made_with(folder, info)
    if same and (done := finished(folder, leftovers=(), accept=accept)) is not None:
        return done
    records = folder / "records.jsonl"
    resume = same and records.exists()
    if not resume:
        records.unlink(missing_ok=True)
        (folder / "summary.json").unlink(missing_ok=True)
    return run_evaluation(ed, cases, folder, info, resume=resume)
