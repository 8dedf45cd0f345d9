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

import logging
from dataclasses import dataclass
from pathlib import Path

from robustedit.data import load_cases
from robustedit.errors import UserError
from robustedit.eval.report import sequential_markdown, write_sequential_plot
from robustedit.eval.runner import RunInfo
from robustedit.eval.sequential import PROBE_CASES, SequentialPlan, run_sequential
from robustedit.experiments import Experiment, Options, finished, register
from robustedit.experiments.base import made_with
from robustedit.output import atomic_write, write_json

log = logging.getLogger(__name__)
DATASET = "counterfact-val"  # 1,801 cases: 1,000 edits and held-out probe cases
N_MAX = 1000


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


@register
class Sequential(Experiment):
    name = "sequential"
    help = ("metrics against 1, 10, 100, 1000 sequential edits for ROME, MEMIT (plain, null-space, edit memory), "
            "FT-L, MEND and SERAC with and without SSS")
    variants = tuple(v.name for v in VARIANTS)
    default_dataset = DATASET

    def run(self, options: Options, out: Path, variants: list[str]) -> dict:
        from robustedit.editors.settings import get_editor

        n = min(options.limit or N_MAX, N_MAX)
        cases = load_cases(DATASET)
        if len(cases) < N_MAX + PROBE_CASES:
            raise UserError(f"the {DATASET} file has {len(cases)} cases; the reproduction needs {N_MAX + PROBE_CASES}")
        edited, probe = cases[:n], cases[N_MAX : N_MAX + PROBE_CASES]  # the same probes whatever --limit
        lm = options.load_model()
        results = {}
        for variant in VARIANTS:  # the combined table shows every variant already run at this N
            folder = out / f"{variant.name}-n{n}"
            if variant.name not in variants:  # shown if an earlier run finished it
                if (done := finished(folder, leftovers=())) is not None:
                    results[variant.name] = done
                continue
            editor = get_editor(variant.editor, lm, sets=[*variant.sets, *options.sets])
            plan = SequentialPlan(n, min(variant.batch_size, n))
            info = RunInfo(variant.editor, lm.name, DATASET, editor.settings(), seed=options.seed,
                           command=options.command, extra={"variant": variant.name})
            leftovers = ("records.jsonl", "checkpoints.jsonl", "edits.jsonl")
            # reused only if made with these settings (a shipped default may have changed since)
            if made_with(folder, info) and (done := finished(folder, leftovers)) is not None:
                results[variant.name] = done
                continue
            for name in (*leftovers, "summary.json"):
                (folder / name).unlink(missing_ok=True)
            results[variant.name] = run_sequential(editor, edited, probe, folder, info, plan, save_edits=False)
        curves = {name: s["sequential"]["checkpoints"] for name, s in results.items()}
        write_json(out / "sequential.json", curves)
        md = [f"# Sequential editing on {lm.name}: first {n} {DATASET} cases", "",
              "Metrics over the facts edited so far, after each number of edits; the ability columns "
              "are measured on text and prompts no edit touched (n = 0: the unedited model).", ""]
        for name, points in curves.items():
            s = results[name]["sequential"]
            md += [f"## {name} ({s['batch_size']} per edit call)", "", sequential_markdown(points)]
        atomic_write(out / "sequential.md", "\n".join(md))
        write_sequential_plot(out / "sequential.png", curves)
        log.info("wrote %s/sequential.md, sequential.json, sequential.png", out)
        return curves
