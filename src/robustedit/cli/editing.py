"""Commands that make and use edits: ``edit`` (one fact or a file of them), ``generate``, ``export``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from robustedit.cli import CONFIG, DEVICE, DTYPE, MODEL, SEED, SET, app, console
from robustedit.errors import UserError
from robustedit.rundir import check_output_folder


def _top_table(prompt: str, before, after) -> Table:
    table = Table(title=f"next token after {prompt!r}")
    table.add_column("rank")
    table.add_column("before")
    table.add_column("after")
    for i, (b, a) in enumerate(zip(before, after), 1):
        table.add_row(str(i), f"{b.token!r} {b.prob:.3f}", f"{a.token!r} {a.prob:.3f}")
    return table


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
    from robustedit.models.forward import top_next_tokens
    from robustedit.models.text import first_target_token
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
    before = top_next_tokens(lm, request.text, top_k)
    first = first_target_token(lm.tokenizer, request.text, request.target_new)
    if before[0].token == first:
        console.print(f"note: the model already predicts {first!r} here; the edit changes little")
    t0 = time.perf_counter()
    with detail():
        delta = ed.edit([request])
    seconds = time.perf_counter() - t0
    with applied(lm, delta):
        after = top_next_tokens(lm, request.text, top_k)
    console.print(_top_table(request.text, before, after))
    if after[0].token != first:  # an edit that did not take must not read like a success
        console.print(f"[yellow]warning: the edit did not take: the top prediction is {after[0].token!r}, "
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
