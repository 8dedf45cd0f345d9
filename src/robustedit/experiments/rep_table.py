"""``robustedit reproduce rep-table``: the REP paper's Table 1 and Figure 7 on the embedded model.

Rows (``--only`` for a subset or for the extra rows): ROME, ROME + REP, MEMIT, MEMIT + REP with
each editor's shipped settings for the model (``resources/configs/<editor>/<model>.yaml``: for the
``+rep`` editors, the setting chosen on ``rep-valid``), and, on request, the same REP editors with
the authors' exact settings (``-reference``: preset ``rep-reference``), the paper's text with its
settings (``-paper``: preset ``rep-paper``) and the paper's text with the gate options beyond it
of our first session (``-gated``). Each edit is made alone on the unedited model (the paper's
single-edit paradigm), on the cases the model knows (the paper's filter; the count is in the
table). Columns: Success (``efficacy_top1``), Locality (``locality_top1``), and top-1 success on
the in-domain and out-of-domain rephrased-subject, shuffled-subject and long-context probes
(``data.perturb``). Every cell is a mean over cases with its 95% bootstrap interval; every REP
row also gets its paired difference from its base editor on the same cases, with its interval
(``eval.intervals``).

The default data is ``rep-test``, the authors' CounterFact test cases. The τ sweep (Figure 7)
trains the ``rome+rep`` adaptor once per case and scores the same edit with the gate threshold at
each τ; it runs on ``rep-valid``, the paper's validation cases, the only file on which a
hyperparameter may be chosen.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from statistics import fmean

from robustedit.data import load_cases
from robustedit.editors.base import Delta, applied
from robustedit.errors import UserError
from robustedit.eval.filters import known_cases
from robustedit.eval.metrics import case_metrics, score_case
from robustedit.data.perturb import RobustnessConfig, in_domain, robustness_probes
from robustedit.eval.runner import EvalOptions, LocalEvaluator, RunInfo, read_records, run_evaluation
from robustedit.experiments import Experiment, Options, register, tables
from robustedit.output import atomic_write, write_json
from robustedit.progress import progress

log = logging.getLogger(__name__)
TABLE_DATASET = "rep-test"
SWEEP_DATASET = "rep-valid"
SWEEP_ROW = "rome+rep"
ROWS = ("rome", "rome+rep", "memit", "memit+rep")
# Extra rows: a REP editor with a bundled preset instead of its shipped settings, and extra --set.
VARIANT_ROWS = {"reference": ("rep-reference", ()), "paper": ("rep-paper", ()),
                # the paper's text with the gate options beyond it that our first session chose
                # (README, "Robustness and REP"): a learning rate that opens the gate, the gate
                # trained shut at the prompts' other tokens, the signed similarity, norm kept
                "gated": ("rep-paper", ("rep.lr=5e-3", "rep.prompt_negatives=true", "rep.absolute=false",
                                        "rep.preserve_norm=true"))}
EXTRA_ROWS = tuple(f"{base}+rep-{v}" for base in ("rome", "memit") for v in VARIANT_ROWS)
TAUS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)
COLUMNS = (("Success", "efficacy_top1"), ("Locality", "locality_top1"),
           ("ID Rephrase", "rephrase_subject_id"), ("ID Shuffle", "shuffle_subject_id"), ("ID Long", "long_context_id"),
           ("OOD Rephrase", "rephrase_subject_ood"), ("OOD Shuffle", "shuffle_subject_ood"),
           ("OOD Long", "long_context_ood"))
SWEEP_METRICS = ("efficacy_top1", "locality_top1", "rephrase_subject_id", "shuffle_subject_id", "long_context_id",
                 "rephrase_subject_ood", "shuffle_subject_ood", "long_context_ood")


def row_editor(row: str, sets: list[str]) -> tuple[str, str | None, list[str]]:
    """The registered editor of a table row, its ``--config`` preset (or None) and its ``--set``
    overrides (the user's come last; ``rep.*`` ones only reach REP rows)."""
    for variant, (preset, extra) in VARIANT_ROWS.items():
        if row.endswith(f"-{variant}"):
            return row.removesuffix(f"-{variant}"), preset, [*extra, *sets]
    return row, None, [s for s in sets if not s.startswith("rep.") or "+rep" in row]


def base_row(row: str) -> str | None:
    """The row a REP row is compared with (its base editor), or None."""
    return row.split("+", 1)[0] if "+rep" in row else None


def row_statistics(records: dict[str, list[dict]]) -> dict[str, dict]:
    """Intervals of every column and, for REP rows, paired differences from the base editor."""
    return tables.row_statistics(records, [k for _, k in COLUMNS], base_row)


def table_markdown(results: dict[str, dict], stats: dict[str, dict], dataset: str, model: str,
                   counts: dict | None = None) -> str:
    counts = counts or {}
    if counts.get("known_only", True):
        kept = f"the cases the model knows ({counts.get('known', '?')} of {counts.get('loaded', '?')})"
    else:
        kept = f"all cases (--all-cases; the model knows {counts.get('known', '?')} of {counts.get('loaded', '?')})"
    lines = [f"# REP table on {model}: {dataset}", "",
             f"Top-1 success in % (REP paper Table 1), mean over cases [95% bootstrap interval]; each edit alone "
             f"on the unedited model; {kept}. A robustness cell averages each case's probes of that kind; a case "
             "without such probes (e.g. a one-token subject has no shuffle) is left out of that cell.", "",
             "| editor | cases | " + " | ".join(c for c, _ in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for row, summary in results.items():
        iv = stats.get(row, {}).get("intervals", {})
        lines.append(f"| {row} | {summary['n_cases']} | " + " | ".join(tables.cell(iv.get(k)) for _, k in COLUMNS) + " |")
    lines += tables.difference_lines(stats, list(COLUMNS))
    return "\n".join(lines) + "\n"


def _mean_metrics(rows: list[dict]) -> dict[str, float]:
    names = sorted({k for r in rows for k in r})
    return {k: fmean(r[k] for r in rows if k in r) for k in names}


def tau_sweep(editor, cases, rob: RobustnessConfig, taus=TAUS) -> dict:
    """Mean metrics at each τ for the same trained adaptors (module docstring), and, as the
    reference, the base editor's weights alone (``without_adaptor``: ROME's row of the table on
    the same cases and edits). ``training`` averages the adaptors' fit diagnostics over cases."""
    lm = editor.lm
    per_tau: dict[float, list[dict]] = {t: [] for t in taus}
    base_rows, training = [], []
    for case in progress(cases, desc="tau sweep"):
        probes = robustness_probes(case, lm.tokenizer, rob)
        pre = score_case(lm, case, probes)
        delta = editor.edit([dataclasses.replace(case.request, in_domain=in_domain(probes))])
        training += list(delta.info.get("rep", {}).values())
        with applied(lm, Delta(delta.weights)):
            base_rows.append(case_metrics(pre, score_case(lm, case, probes)))
        for tau in taus:
            for adaptor in delta.adaptors.values():
                adaptor.tau = tau
            with applied(lm, delta):
                per_tau[tau].append(case_metrics(pre, score_case(lm, case, probes)))
    fit_keys = ("gate_mean", "gate_open_share", "similarity_before", "similarity_soft_gate", "similarity_after")
    return {"taus": list(taus), "n_cases": len(cases),
            "metrics": {str(tau): _mean_metrics(rows) for tau, rows in per_tau.items()},
            "without_adaptor": _mean_metrics(base_rows),
            "training": {k: fmean(t[k] for t in training) for k in fit_keys if training and all(k in t for t in training)}}


def tau_sweep_markdown(result: dict) -> str:
    lines = [f"# ROME + REP against the gate threshold τ on {result.get('model', '?')}: {result.get('dataset', '?')}", "",
             f"Top-1 success in %, {result['n_cases']} known cases; each case edited once, its adaptor scored at every τ.", "",
             "| τ | " + " | ".join(SWEEP_METRICS) + " |", "|---|" + "---|" * len(SWEEP_METRICS)]
    rows = [(str(t), result["metrics"][str(t)]) for t in result["taus"]]
    rows.append(("ROME alone", result.get("without_adaptor", {})))
    for label, m in rows:
        lines.append(f"| {label} | " + " | ".join(f"{100 * m[k]:.1f}" if k in m else "–" for k in SWEEP_METRICS) + " |")
    if result.get("training"):
        lines += ["", "Adaptor training (mean over cases): " +
                  ", ".join(f"{k} {v:.3g}" for k, v in result["training"].items())]
    return "\n".join(lines) + "\n"


def plot_tau_sweep(result: dict, path: Path) -> Path:
    from robustedit.output import figure, save_figure

    fig, ax = figure(6.5, 4.2)
    taus = result["taus"]
    for metric in SWEEP_METRICS:
        ys = [result["metrics"][str(t)].get(metric) for t in taus]
        if all(y is None for y in ys):
            continue
        line, = ax.plot(taus, [100 * y if y is not None else float("nan") for y in ys], marker="o", markersize=3,
                        linestyle="--" if metric.endswith("_ood") else "-", label=metric)
        base = result.get("without_adaptor", {}).get(metric)
        if base is not None:  # the same edits without the adaptor: a thin dotted line in the same colour
            ax.axhline(100 * base, color=line.get_color(), linestyle=":", linewidth=0.8)
    ax.set_xlabel("gate threshold τ")
    ax.set_ylabel("top-1 success (%)")
    ax.set_title(f"ROME + REP against τ ({result['dataset']}, {result['n_cases']} known cases; "
                 "dotted: ROME alone)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, path)


def _known(lm, dataset: str, limit: int | None, known_only: bool = True) -> tuple[list, dict]:
    cases = load_cases(dataset)
    kept = known_cases(lm, cases)
    if not known_only:
        log.info("%s: the model knows %d of %d cases; --all-cases keeps them all", dataset, len(kept), len(cases))
        return (cases[:limit] if limit else cases), {"loaded": len(cases), "known": len(kept), "known_only": False}
    if not kept:
        raise UserError(f"the model knows none of the {len(cases)} cases of {dataset}; "
                        "--all-cases evaluates the edits on every case")
    log.info("%s: the model knows %d of %d cases", dataset, len(kept), len(cases))
    return (kept[:limit] if limit else kept), {"loaded": len(cases), "known": len(kept)}


def _run_row(row: str, lm, cases, folder: Path, sets: list[str], seed: int, command: str, dataset: str,
             rob: RobustnessConfig, extra: dict, pre_scores: dict) -> tuple[dict, list[dict]]:
    """Evaluate one row into ``folder``; a finished row is read back, a row cut short continues
    where it stopped if its editor and settings are unchanged (else it starts over). The rows
    share ``pre_scores``: each case is scored on the unedited model once."""
    from robustedit.editors.settings import get_editor

    name, preset, row_sets = row_editor(row, sets)
    editor = get_editor(name, lm, config=preset, sets=row_sets)
    cfg = editor.settings()
    setup = {"editor": name, "config": cfg, "dataset": dataset, "seed": seed, "robustness": dataclasses.asdict(rob),
             "cases": [c.case_id for c in cases]}
    setup_path = folder / "row.json"
    same = setup_path.exists() and json.loads(setup_path.read_text()) == json.loads(json.dumps(setup))
    if same and (folder / "summary.json").exists():
        return json.loads((folder / "summary.json").read_text()), read_records(folder / "records.jsonl")
    if not same:
        (folder / "records.jsonl").unlink(missing_ok=True)
        (folder / "summary.json").unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        setup_path.write_text(json.dumps(setup, indent=2) + "\n")
    info = RunInfo(name, lm.name, dataset, cfg, seed=seed, command=command, extra=extra)
    evaluator = LocalEvaluator(editor, EvalOptions(rob, seed), pre_scores)
    summary = run_evaluation(evaluator, cases, folder, info, resume=True)
    return summary, read_records(folder / "records.jsonl")


@register
class REPTable(Experiment):
    name = "rep-table"
    help = ("the REP paper's Table 1 (ROME/MEMIT with and without REP, robustness in- and out-of-domain) "
            "and its τ sweep")
    variants = (*ROWS, *EXTRA_ROWS, "tau-sweep")
    default_variants = (*ROWS, "tau-sweep")
    datasets = None  # any file; rep-test by default
    takes_all_cases = True

    def run(self, options: Options, out: Path, rows: list[str]) -> dict:
        from robustedit.editors.settings import get_editor

        lm = options.load_model()
        seed, sets, limit, known_only = options.seed, list(options.sets), options.limit, options.known_only
        rob = RobustnessConfig(seed=seed)
        command = options.command
        dataset = options.dataset or TABLE_DATASET
        results: dict[str, dict] = {}
        table_rows = [r for r in rows if r != "tau-sweep"]
        if table_rows:
            cases, counts = _known(lm, dataset, limit, known_only)
            extra = {"filter": {"known_only": known_only, **counts}, "robustness": dataclasses.asdict(rob)}
            records, pre_scores = {}, {}
            for row in table_rows:
                results[row], records[row] = _run_row(row, lm, cases, out / row, sets, seed, command, dataset, rob,
                                                      extra, pre_scores)
            # a base row already in OUT (from an earlier --only run) still pairs with its REP rows
            for row in list(records):
                base = base_row(row)
                if base and base not in records and (out / base / "summary.json").exists():
                    records[base] = [r for r in read_records(out / base / "records.jsonl")
                                     if r["case_id"] in {c.case_id for c in cases}]
            stats = row_statistics(records)
            write_json(out / "rep_table.json",
                       {"dataset": dataset, "model": lm.name, "command": command, "filter": counts,
                        "rows": {r: {"n_cases": s["n_cases"], "metrics": s["metrics"], "config": s.get("config"),
                                     **stats[r]} for r, s in results.items()}})
            atomic_write(out / "rep_table.md", table_markdown(results, stats, dataset, lm.name, counts))
            log.info("wrote %s/rep_table.md and rep_table.json", out)
        if "tau-sweep" in rows:
            cases, counts = _known(lm, SWEEP_DATASET, limit, known_only)
            name, preset, row_sets = row_editor(SWEEP_ROW, sets)
            editor = get_editor(name, lm, config=preset, sets=row_sets)
            sweep = tau_sweep(editor, cases, rob)
            sweep.update({"row": SWEEP_ROW, "dataset": SWEEP_DATASET, "model": lm.name, "command": command,
                          "config": editor.settings(), "filter": counts})
            write_json(out / "tau_sweep.json", sweep)
            atomic_write(out / "tau_sweep.md", tau_sweep_markdown(sweep))
            plot_tau_sweep(sweep, out / "tau_sweep.png")
            results["tau-sweep"] = sweep
            log.info("wrote %s/tau_sweep.{json,md,png}", out)
        return results
