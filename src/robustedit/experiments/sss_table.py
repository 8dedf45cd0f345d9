"""``robustedit reproduce sss-table`` and ``reproduce sss-c-sweep``: the SSS paper's Table 1 and
Figure 3 on the embedded model.

**sss-table.** Rows FT-L, MEND, SERAC, each without and with SSS (``--only`` for a subset, and
for the extra FT-L rows: ``ft-l+sss-reference`` with the authors' form of the term,
``ft-l+sss-paper`` with the paper's, ``ft-l+sss-detached`` the control whose term carries no
gradient, ``ft-l+sss-reference-detached``; the form rows keep the shipped C unless ``--set
sss.coefficient=C`` says otherwise); on three test sets, each edit made alone on the unedited
model, every case (the paper does not filter by what the model knows):

- ``zsre-knowedit``: KnowEdit's zsRE test set; its locality prompts ask about another fact of
  the same subject (KnowEdit's "Relation_Specificity").
- ``zsre-nq``: zsRE locality as the paper and EasyEdit measure it, a Natural Questions question
  and its answer (the ``loc`` / ``loc_ans`` fields). Only the MEND-schema training file carries
  them, so this set is the tail of ``zsre-train`` that MEND's and SERAC's training holds out for
  validation (``training/loop.split_cases``, 10%: 100 edits); they never train on it.
- ``counterfact``: out of domain for MEND and SERAC, as in the paper.

FT-L rows take the first ``FTL_CASES`` of each set (an edit takes seconds), MEND and SERAC every
case (a tenth of a second), ``--limit`` caps all; ``--dataset`` runs one of the three sets (the
rows of one ``--out`` can so be split over processes, one per row and set) and names its files
``sss_table-<set>.*``. Columns in the paper's
terms, as EasyEdit scores them: Reliability (``efficacy_acc``), Generality (``paraphrase_acc``),
Locality (``locality_acc``), teacher-forced token accuracy, each a mean over cases with its 95%
bootstrap interval; every ``+sss`` row also gets its paired difference from its base editor on
the same cases (``experiments/tables.py``). MEND and SERAC are trained on zsRE
(``robustedit train ...``), so their CounterFact columns are out of domain, as in the paper. A
trained editor that is missing is a one-line error naming its train command, before anything runs.

**Training seeds.** A trained row is one network, trained with seed 0. Rows ``mend@seed1``,
``mend+sss@seed2``, ... (``SEED_ROWS``) evaluate the networks trained with other seeds
(``robustedit train NAME --seed S``), each ``+sss`` row paired with its base of the same seed.
Once a set has a ``+sss`` row and its base under two or more seeds in this ``--out`` (run in any
invocation), its table ends with the difference across seeds: each seed's paired mean, their
mean, and the 95% interval over cases of the per-case difference averaged over the seeds (the
spread between seeds is the per-seed column; three seeds cannot give it an interval of its own).

**sss-c-sweep.** FT-L + SSS with C ∈ ``C_VALUES`` (C = 0 is plain FT-L) on zsRE (``zsre-knowedit``), the same three
metrics against C, as the paper's Figure 3. Trained editors would need one training per C; they
are not swept here (train them with ``--set sss.coefficient=C --out DIR`` and evaluate each).
Both write JSON, a Markdown table and a PNG, and reuse finished rows when rerun in the same --out.
"""

from __future__ import annotations

import logging
from pathlib import Path

from robustedit.data import load_cases
from robustedit.errors import UserError
from robustedit.eval.intervals import bootstrap_mean, per_case
from robustedit.eval.runner import read_records
from robustedit.experiments import Experiment, Options, evaluate_variant, register, tables
from robustedit.output import atomic_write, write_json

log = logging.getLogger(__name__)
ROWS = ("ft-l", "ft-l+sss", "mend", "mend+sss", "serac", "serac+sss")
# Extra FT-L rows: the SSS term in each form, and the detached control (editors/sss.py).
VARIANTS = {"-reference": "sss.form=reference", "-paper": "sss.form=paper", "-detached": "sss.detach=true"}
EXTRA_ROWS = ("ft-l+sss-reference", "ft-l+sss-paper", "ft-l+sss-detached", "ft-l+sss-reference-detached")
TRAINED = ("mend", "mend+sss", "serac", "serac+sss")
SEEDS = (1, 2)  # training seeds besides 0 (the plain rows): three in all, as the issue asks
SEED_ROWS = tuple(f"{row}@seed{seed}" for seed in SEEDS for row in TRAINED)  # see seed_row
DATASETS = ("zsre-knowedit", "zsre-nq", "counterfact")
FTL_CASES = 200
C_VALUES = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
SWEEP_CASES = 20
COLUMNS = (("Reliability", "efficacy_acc"), ("Generality", "paraphrase_acc"), ("Locality", "locality_acc"))


def row_editor(row: str, sets: list[str]) -> tuple[str, list[str]]:
    """The registered editor of a table row and its ``--set`` overrides (variant suffixes first)."""
    name, _, seed = row.partition("@seed")
    extra = [f"train.seed={seed}"] if seed else []
    for suffix, setting in VARIANTS.items():
        if suffix in name:
            name = name.replace(suffix, "")
            extra.append(setting)
    return name, [*extra, *(s for s in sets if not s.startswith("sss.") or "+sss" in name)]


def base_row(row: str) -> str | None:
    """The row a ``+sss`` row is compared with (its editor without SSS, same training seed), or None."""
    name, at, seed = row.partition("@")
    return name.split("+", 1)[0] + at + seed if "+sss" in name else None


def seed_row(row: str, seed: int) -> str:
    """The row of ``row``'s editor trained with ``seed`` (seed 0: the row itself)."""
    return f"{row}@seed{seed}" if seed else row


def across_seeds(records: dict[str, list[dict]], metrics: list[str]) -> dict[str, dict]:
    """Per ``+sss`` trained editor with its base under two or more seeds in ``records``: each
    seed's paired mean difference, their mean, and the interval over cases of the per-case
    difference averaged over those seeds (on the cases every seed scored)."""
    out: dict[str, dict] = {}
    for editor in (r for r in TRAINED if "+sss" in r):
        base = base_row(editor)
        seeds = [s for s in (0, *SEEDS) if seed_row(editor, s) in records and seed_row(base, s) in records]
        if len(seeds) < 2:
            continue
        entry: dict = {"compared_with": base, "seeds": seeds, "per_seed": {}, "mean": {}}
        for metric in metrics:
            per_seed = []
            for s in seeds:
                a, b = (per_case(records[seed_row(r, s)], metric) for r in (editor, base))
                per_seed.append({c: a[c] - b[c] for c in a.keys() & b.keys()})
            common = sorted(set.intersection(*(set(d) for d in per_seed)))
            averaged = bootstrap_mean([sum(d[c] for d in per_seed) / len(seeds) for c in common])
            if averaged is None:
                continue
            entry["per_seed"][metric] = [sum(d[c] for c in common) / len(common) for d in per_seed]
            entry["mean"][metric] = averaged.as_dict()
        out[editor] = entry
    return out


def seed_lines(summary: dict[str, dict], columns: list[tuple[str, str]]) -> list[str]:
    """Markdown lines of the across-seeds table (empty without two seeds of a pair)."""
    if not summary:
        return []
    lines = ["", "Across training seeds: the paired difference averaged over the seeds, in points "
             "[95% bootstrap interval over cases of the seed-averaged difference] (each seed's mean difference):", "",
             "| editor − base | seeds | cases | " + " | ".join(c for c, _ in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for editor, e in summary.items():
        n = max((m["n"] for m in e["mean"].values()), default=0)
        cells = [f"{tables.cell(e['mean'].get(k), signed=True)} ("
                 + " / ".join(f"{100 * v:+.1f}" for v in e["per_seed"].get(k, [])) + ")" for _, k in columns]
        lines.append(f"| {editor} − {e['compared_with']} | {', '.join(map(str, e['seeds']))} | {n} | "
                     + " | ".join(cells) + " |")
    return lines


def table_cases(dataset: str) -> list:
    """The cases of one of the table's test sets (``zsre-nq``: the held-out tail of zsre-train)."""
    if dataset != "zsre-nq":
        return load_cases(dataset)
    from robustedit.training.loop import LoopConfig, split_cases

    return split_cases(load_cases("zsre-train"), LoopConfig().val_fraction)[1]


def _evaluate(lm, name: str, sets: list[str], dataset: str, cases, folder: Path, options: Options) -> dict:
    """One row on one set; a finished row is reused only if it holds every wanted case."""
    wanted = {c.case_id for c in cases}

    def holds_the_cases(summary: dict) -> bool:
        done = {r["case_id"] for r in read_records(folder / "records.jsonl")}
        return summary.get("n_cases") == len(wanted) and done >= wanted

    return evaluate_variant(lm, name, sets, dataset, cases, folder, options, accept=holds_the_cases)


def _records(folder: Path, cases) -> list[dict]:
    wanted = {c.case_id for c in cases}
    return [r for r in read_records(folder / "records.jsonl") if r["case_id"] in wanted]


def _check_trained(lm, rows: list[str], sets: list[str]) -> None:
    """Every trained row must find its trained editor before hours of FT-L start."""
    from robustedit.editors.settings import get_editor

    for row in rows:
        name, row_sets = row_editor(row, [s for s in sets if s.startswith(("checkpoint=", "threshold="))])
        if name in TRAINED:
            get_editor(name, lm, sets=row_sets)


def table_markdown(results: dict, stats: dict, model: str, seeds: dict | None = None) -> str:
    """One table per dataset: each cell mean [95% interval] with the row's case count, then the
    paired differences of the ``+sss`` rows from their base editors, then (``seeds``) the
    differences across training seeds."""
    lines = [f"# SSS table on {model}", "",
             "Token accuracy in % (SSS paper Table 1, EasyEdit's scoring), mean over cases [95% bootstrap interval]; "
             "each edit alone on the unedited model. Locality on zsre-knowedit: another fact of the same subject "
             "(KnowEdit); on zsre-nq: a Natural Questions question (EasyEdit, the paper), on the tail of zsre-train "
             "that MEND and SERAC hold out of training. MEND and SERAC are trained on zsRE: CounterFact is out of "
             "domain for them."]
    columns = list(COLUMNS)
    for d in DATASETS:
        rows = {r: per[d] for r, per in results.items() if d in per}
        if not rows:
            continue
        lines += ["", f"## {d}", "", "| editor | cases | " + " | ".join(c for c, _ in columns) + " | edit s (median) |",
                  "|---|---|" + "---|" * (len(columns) + 1)]
        for row, summary in rows.items():
            iv = stats[d].get(row, {}).get("intervals", {})
            t = summary["timing"].get("edit_s_median")
            lines.append(f"| {row} | {summary['n_cases']} | " + " | ".join(tables.cell(iv.get(k)) for _, k in columns)
                         + f" | {'–' if t is None else f'{t:.2f}'} |")
        lines += tables.difference_lines(stats[d], columns)
        lines += seed_lines((seeds or {}).get(d, {}), columns)
    return "\n".join(lines) + "\n"


def plot_table(results: dict, sizes: dict[str, int], path: Path) -> Path:
    from robustedit.output import figure, save_figure

    fig, ax = figure(8, 4)
    labels = [f"{d}\n{c}" for d in sizes for c, _ in COLUMNS]
    width = 0.8 / max(1, len(results))
    for i, (row, per_dataset) in enumerate(results.items()):
        ys = [100 * per_dataset.get(d, {}).get("metrics", {}).get(k, float("nan")) for d in sizes for _, k in COLUMNS]
        ax.bar([x + i * width for x in range(len(labels))], ys, width, label=row)
    ax.set_xticks([x + width * (len(results) - 1) / 2 for x in range(len(labels))], labels, fontsize=7)
    ax.set_ylabel("token accuracy (%)")
    ax.legend(fontsize=7, ncol=3)
    return save_figure(fig, path)


@register
class SSSTable(Experiment):
    name = "sss-table"
    help = "the SSS paper's Table 1: FT-L, MEND, SERAC with and without SSS on zsRE and CounterFact"
    variants = (*ROWS, *EXTRA_ROWS, *SEED_ROWS)
    default_variants = ROWS
    datasets = DATASETS

    def run(self, options: Options, out: Path, rows: list[str]) -> dict:
        lm = options.load_model()
        sets = list(options.sets)
        _check_trained(lm, rows, sets)
        dataset, limit = options.dataset, options.limit
        sets_run = (dataset,) if dataset else DATASETS
        every = {d: table_cases(d) for d in sets_run}

        def cases_of(row: str, d: str):  # FT-L rows: the first FTL_CASES; trained editors: every case
            n = limit or (FTL_CASES if row.startswith("ft-l") else None)
            return every[d][:n] if n else every[d]

        results: dict[str, dict] = {}
        records: dict[str, dict[str, list[dict]]] = {d: {} for d in sets_run}
        for row in rows:
            name, row_sets = row_editor(row, sets)
            results[row] = {}
            for d in sets_run:
                cases = cases_of(row, d)
                results[row][d] = _evaluate(lm, name, row_sets, d, cases, out / row / d, options)
                records[d][row] = _records(out / row / d, cases)
        for d in sets_run:  # a base row finished in an earlier run of this --out still pairs with its +sss rows
            for row in list(records[d]):
                base = base_row(row)
                if base and base not in records[d] and (out / base / d / "summary.json").exists():
                    records[d][base] = _records(out / base / d, every[d])
        metrics = [k for _, k in COLUMNS]
        stats = {d: tables.row_statistics(records[d], metrics, base_row) for d in sets_run}
        seeds = {d: across_seeds(self._trained_rows(out, d, every[d], records[d]), metrics) for d in sets_run}
        sizes = {d: max(len(cases_of(r, d)) for r in rows) for d in sets_run}
        stem = f"sss_table-{dataset}" if dataset else "sss_table"  # one set's table beside the others'
        write_json(out / f"{stem}.json",
                   {"model": lm.name, "command": options.command,
                    "rows": {r: {d: {"n_cases": s["n_cases"], "metrics": s["metrics"], "timing": s["timing"],
                                     "config": s.get("config"), **stats[d][r]} for d, s in per.items()}
                             for r, per in results.items()},
                    "across_seeds": {d: v for d, v in seeds.items() if v}})
        atomic_write(out / f"{stem}.md", table_markdown(results, stats, lm.name, seeds))
        plot_table(results, sizes, out / f"{stem}.png")
        log.info("wrote %s/%s.{json,md,png}", out, stem)
        return results

    @staticmethod
    def _trained_rows(out: Path, dataset: str, cases, ran: dict[str, list[dict]]) -> dict[str, list[dict]]:
        """The trained rows of ``dataset`` this run made, and those an earlier run finished in ``out``."""
        rows = {r: ran[r] for r in (*TRAINED, *SEED_ROWS) if r in ran}
        for r in (*TRAINED, *SEED_ROWS):
            if r not in rows and (out / r / dataset / "summary.json").exists():
                rows[r] = _records(out / r / dataset, cases)
        return rows


def sweep_markdown(result: dict) -> str:
    lines = [f"# FT-L + SSS against C on {result['model']}: {result['dataset']}", "",
             f"Token accuracy in %, first {result['n_cases']} cases, each edit alone (C = 0 is FT-L).", "",
             "| C | " + " | ".join(c for c, _ in COLUMNS) + " | edit s (median) |", "|---|" + "---|" * (len(COLUMNS) + 1)]
    for c in result["c_values"]:
        s = result["runs"][str(c)]
        lines.append(f"| {c} | " + " | ".join(f"{100 * s['metrics'][k]:.1f}" for _, k in COLUMNS)
                     + f" | {s['timing'].get('edit_s_median', float('nan')):.1f} |")
    return "\n".join(lines) + "\n"


def plot_sweep(result: dict, path: Path) -> Path:
    from robustedit.output import figure, save_figure

    fig, ax = figure(6, 4)
    cs = result["c_values"]
    for label, key in COLUMNS:
        ax.plot(cs, [100 * result["runs"][str(c)]["metrics"][key] for c in cs], marker="o", label=label)
    ax.set_xlabel("C (weight of SSS in (1 − C)·L + C·SSS)")
    ax.set_ylabel("token accuracy (%)")
    ax.set_title(f"FT-L + SSS on {result['dataset']} ({result['n_cases']} cases)", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


@register
class SSSCSweep(Experiment):
    name = "sss-c-sweep"
    help = "the SSS paper's Figure 3: FT-L + SSS against C"
    variants = ("ft-l+sss",)
    datasets = None  # any data; zsre-knowedit by default

    def check(self, options: Options) -> None:
        if any(o != "ft-l+sss" for o in options.only):
            raise UserError("sss-c-sweep sweeps ft-l+sss; trained editors need one training per C "
                            "(robustedit train mend+sss --set sss.coefficient=C --out DIR)")
        super().check(options)

    def run(self, options: Options, out: Path, variants: list[str]) -> dict:
        dataset = options.dataset or DATASETS[0]
        lm = options.load_model()
        cases = load_cases(dataset, limit=options.limit or SWEEP_CASES)
        runs = {str(c): _evaluate(lm, "ft-l+sss", [*options.sets, f"sss.coefficient={c}"], dataset, cases,
                                  out / f"C-{c}", options) for c in C_VALUES}
        result = {"model": lm.name, "dataset": dataset, "n_cases": len(cases), "command": options.command,
                  "c_values": list(C_VALUES),
                  "runs": {c: {"metrics": s["metrics"], "timing": s["timing"]} for c, s in runs.items()}}
        write_json(out / "sss_c_sweep.json", result)
        atomic_write(out / "sss_c_sweep.md", sweep_markdown(result))
        plot_sweep(result, out / "sss_c_sweep.png")
        log.info("wrote %s/sss_c_sweep.{json,md,png}", out)
        return result
