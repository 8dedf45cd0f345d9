"""``robustedit reproduce sequential``: metrics against the number of sequential edits, per editor
(the shape of the SSS paper's Table 2), with two MEMIT variants for long sequences beside it: the
null-space update (AlphaEdit) and the memory of committed edits alone (``edit_memory``).

Each variant is one sequential run of the first N cases of ``counterfact-val`` (CounterFact in
EasyEdit's schema; the 925-case original file is too small for N = 1000) (``eval.sequential``), scored
at 1, 10, 100, … and N edits (ability probes: the neighbour prompts of cases 1000–1049, whatever
N), in its own folder ``OUT/<variant>-n<N>/``. A variant whose folder already
has a ``summary.json`` is not run again, so an interrupted reproduction continues where it stopped
(the variant in flight starts over). The combined table and plot are ``OUT/sequential.{json,md,png}``.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from robustedit.data import load_cases
from robustedit.errors import UserError
from robustedit.eval.report import sequential_markdown, write_sequential_plot
from robustedit.eval.runner import RunInfo
from robustedit.eval.sequential import SequentialPlan, run_sequential
from robustedit.experiments import EXPERIMENTS, Experiment

log = logging.getLogger(__name__)
DATASET = "counterfact-val"  # 1,801 cases: 1,000 edits and held-out probe cases
N_MAX = 1000
PROBE_CASES = 50


@dataclass(frozen=True)
class Variant:
    name: str
    editor: str
    batch_size: int
    sets: tuple[str, ...] = ()


VARIANTS = (
    Variant("rome", "rome", 1),
    Variant("memit", "memit", 10),
    Variant("memit-nullspace", "memit", 10, ("nullspace.enabled=true",)),
    Variant("memit-memory", "memit", 10, ("edit_memory=true",)),
    # the SSS paper's Table 2 editors, one edit per call (MEND and SERAC trained on zsRE: out of domain here)
    *(Variant(name, name, 1) for name in ("ft-l", "ft-l+sss", "mend", "mend+sss", "serac", "serac+sss")),
)


def run(*, out: Path | None, model: str, config: str | None, sets: list[str], seed: int, device: str, dtype: str,
        limit: int | None = None, only: list[str] | None = None, dataset: str | None = None,
        known_only: bool = True) -> dict:
    from robustedit.cli import _setup  # the CLI's model setup: seeds, dtype, device
    from robustedit.session import make_editor

    if not known_only:
        raise UserError("--all-cases is for rep-table; reproduce sequential edits every case it is given")

    if dataset is not None:
        raise UserError(f"reproduce sequential always edits {DATASET}; --dataset does not apply")
    if config is not None:
        raise UserError("reproduce sequential runs several editors; set their hyperparameters with --set instead of --config")
    names = [v.name for v in VARIANTS]
    unknown = [o for o in only or [] if o not in names]
    if unknown:
        raise UserError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    variants = [v for v in VARIANTS if not only or v.name in only]
    n = min(limit or N_MAX, N_MAX)
    out = Path(out or "runs/reproduce-sequential")
    cases = load_cases(DATASET)
    if len(cases) < N_MAX + PROBE_CASES:
        raise UserError(f"the {DATASET} file has {len(cases)} cases; the reproduction needs {N_MAX + PROBE_CASES}")
    edited, probe = cases[:n], cases[N_MAX : N_MAX + PROBE_CASES]  # the same probes whatever --limit
    lm = _setup(model, dtype, device, seed)
    results = {}
    for variant in VARIANTS:  # the combined table shows every variant already run at this N
        folder = out / f"{variant.name}-n{n}"
        if (folder / "summary.json").exists():
            results[variant.name] = json.loads((folder / "summary.json").read_text())
            continue
        if variant not in variants:
            continue
        for leftover in ("records.jsonl", "checkpoints.jsonl", "edits.jsonl"):  # a variant cut short starts over
            (folder / leftover).unlink(missing_ok=True)
        editor, cfg = make_editor(variant.editor, lm, sets=[*variant.sets, *sets])
        plan = SequentialPlan(n, min(variant.batch_size, n))
        info = RunInfo(variant.editor, lm.name, DATASET, cfg, seed=seed,
                       command="robustedit " + shlex.join(sys.argv[1:]), extra={"variant": variant.name})
        results[variant.name] = run_sequential(editor, edited, probe, folder, info, plan, save_edits=False)
    curves = {name: s["sequential"]["checkpoints"] for name, s in results.items()}
    (out / "sequential.json").write_text(json.dumps(curves, indent=2) + "\n")
    md = [f"# Sequential editing on {lm.name}: first {n} {DATASET} cases", "",
          "Metrics over the facts edited so far, after each number of edits; the ability columns "
          "are measured on text and prompts no edit touched (n = 0: the unedited model).", ""]
    for name, points in curves.items():
        s = results[name]["sequential"]
        md += [f"## {name} ({s['batch_size']} per edit call)", "", sequential_markdown(points)]
    (out / "sequential.md").write_text("\n".join(md))
    write_sequential_plot(out / "sequential.png", curves)
    log.info("wrote %s/sequential.md, sequential.json, sequential.png", out)
    return curves


EXPERIMENTS.register("sequential", Experiment("sequential", "metrics against 1, 10, 100, 1000 sequential edits "
                                              "for ROME, MEMIT (plain, null-space, edit memory), FT-L, MEND and SERAC with and without SSS", run))
