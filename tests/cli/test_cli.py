"""The ``robustedit`` command line (docs/contract.md): help, and one-line errors for user mistakes.

A user mistake must exit with status 2, print exactly one line ``error: ...`` on stderr with no
traceback, and leave no output file or folder behind. Tests not marked ``integration`` run with
model loading forbidden (see conftest.py), so they also prove that the check comes before the
model is loaded; checks the CLI can only make with the model in hand are ``integration`` tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import assert_user_error

COMMON = ("--model", "--config", "--set", "--seed", "--device", "--dtype")
DARRIEUX = ("--prompt", "The mother tongue of {} is", "--subject", "Danielle Darrieux", "--target", "English")


def _has_option(help_text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text) is not None


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _edit(*extra: str, prompt="The mother tongue of {} is", subject="Danielle Darrieux", target="English"):
    return ("edit", "--prompt", prompt, "--subject", subject, "--target", target, *extra)


@pytest.fixture
def save_dir(tmp_path) -> Path:
    """A --save folder that a failed edit must not create."""
    return tmp_path / "saved-edit"


@pytest.fixture
def out_dir(tmp_path) -> Path:
    """An --out folder that a failed evaluate must not create."""
    return tmp_path / "run-out"


def _nothing_written(tmp_path: Path, *, allowed: tuple[str, ...] = ()) -> None:
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                  if not any(str(p.relative_to(tmp_path)).startswith(a) for a in allowed))
    assert left == [], f"a failed command left files behind: {left}"


# --- help ---------------------------------------------------------------------------------------


def test_list_names_every_editor_dataset_model_and_experiment(cli):
    from robustedit.data.loaders import dataset_names
    from robustedit.editors import EDITORS
    from robustedit.experiments import EXPERIMENTS
    from robustedit.models.embedded import EMBEDDED

    result = cli("list")
    assert result.exc is None and result.code == 0, result.describe()
    for name in [*EDITORS.names(), *dataset_names(), *EMBEDDED.names(), *EXPERIMENTS.names()]:
        assert name in result.out, f"{name!r} missing from `robustedit list`"


def test_top_level_help_lists_every_command(cli):
    result = cli("--help")
    assert result.exc is None and result.code == 0, result.describe()
    for command in ("edit", "evaluate", "stats", "reproduce", "analyze", "train", "list"):
        assert re.search(rf"\b{command}\b", result.out), f"{command!r} missing from --help:\n{result.out}"


@pytest.mark.parametrize("command, options", [
    ("edit", ("--editor", "--prompt", "--subject", "--target", "--save", *COMMON)),
    ("evaluate", ("--editor", "--dataset", "--limit", "--out", "--resume", *COMMON)),
    ("reproduce", ("--out", *COMMON)),
    ("train", ("--out", "--resume", *COMMON)),
    # `stats` is not in docs/contract.md; it has no editor, hence no --config / --set.
    ("stats", ("--layers", "--model", "--seed", "--device", "--dtype")),
])
def test_command_help(cli, command, options):
    result = cli(command, "--help")
    assert result.exc is None and result.code == 0, result.describe()
    missing = [o for o in options if not _has_option(result.out, o)]
    assert not missing, f"`{command} --help` does not list {missing}:\n{result.out}"
    assert result.err_lines == [], result.describe()


# --- edit: mistakes found before the model loads -----------------------------------------------


@pytest.mark.parametrize("args, fragments", [
    (_edit(prompt="The mother tongue of Danielle Darrieux is"), ("{}",)),
    (_edit(prompt="{} speaks {}"), ("{}",)),
    (_edit(target=""), ("target", "empty")),
    (_edit(target="   "), ("target", "empty")),
    (_edit(subject=""), ("subject", "empty")),
    (_edit(subject="  "), ("subject", "empty")),
    (_edit("--model", "nosuchmodel"), ("nosuchmodel", "smollm2")),
    (_edit("--dtype", "float64"), ("float64", "float32")),
], ids=["prompt-no-braces", "prompt-two-braces", "empty-target", "blank-target", "empty-subject",
        "blank-subject", "unknown-model", "unknown-dtype"])
def test_edit_user_errors(cli, tmp_path, save_dir, args, fragments):
    assert_user_error(cli(*args, "--save", save_dir), *fragments)
    assert not save_dir.exists()
    _nothing_written(tmp_path)


def test_edit_refuses_an_existing_save_folder_and_leaves_it_alone(cli, tmp_path, save_dir):
    save_dir.mkdir()
    (save_dir / "manifest.json").write_text('{"keep": "me"}\n')
    (save_dir / "sub").mkdir()
    (save_dir / "sub" / "delta.safetensors").write_bytes(b"\x00\x01precious")
    before = _tree(save_dir)
    line = assert_user_error(cli(*_edit("--save", save_dir)), "exists")
    assert "saved-edit" in line
    assert _tree(save_dir) == before
    _nothing_written(tmp_path, allowed=("saved-edit",))


# Mistakes that the CLI can see without the model must be reported before it loads the model.


@pytest.mark.parametrize("extra", [
    ("--editor", "rom"),
    ("--editor", "rome+xyz"),
    ("--set", "nosuchkey=1"),
    ("--set", "layer=abc"),
    ("--config", "missing.yaml"),
    ("--editor", "ft-l+sss", "--set", "sss.coefficient=2"),
    ("--editor", "ft-l+sss", "--set", "sss.wrt=logits"),
    ("--editor", "rome", "--rephrase", "Mlle Darrieux"),
    ("--editor", "rome+rep", "--config", "rep-papers"),
    ("--editor", "rome+rep", "--set", "rep.variant=code"),
], ids=["unknown-editor", "unknown-addon", "unknown-key", "wrong-type", "missing-config", "sss-c-out-of-range",
        "sss-wrt-unknown", "rephrase-without-rep", "unknown-preset", "unknown-rep-variant"])
def test_edit_checks_editor_and_config_before_loading_the_model(cli, save_dir, extra):
    assert_user_error(cli(*_edit(*extra, "--save", save_dir)))
    assert not save_dir.exists()


@pytest.mark.parametrize("extra, fragments", [
    (("--set", "v_lr=nan"), ("v_lr", "finite")),
    (("--set", "v_lr=inf"), ("v_lr", "finite")),
    (("--top-k", "0"), ("top-k",)),
    (("--top-k", "100000"), ("top-k",)),
    (("--top-k", "-1"), ("top-k",)),
], ids=["nan-setting", "inf-setting", "top-k-zero", "top-k-huge", "top-k-negative"])
def test_edit_checks_ranges_and_finiteness_before_loading_the_model(cli, save_dir, extra, fragments):
    assert_user_error(cli(*_edit(*extra, "--save", save_dir)), *fragments)
    assert not save_dir.exists()


@pytest.mark.parametrize("command", [
    ("edit", "--prompt", "The mother tongue of {} is", "--subject", "Danielle Darrieux", "--target", "English", "--save"),
    ("evaluate", "--editor", "rome", "--dataset", "counterfact", "--limit", "1", "--out"),
    ("train", "mend", "--out"),
    ("reproduce", "sss-table", "--only", "ft-l", "--out"),
    ("trace", "--prompt", "{} is in", "--subject", "Paris", "--out"),
], ids=["edit-save", "evaluate", "train", "reproduce", "trace"])
def test_unwritable_or_file_outputs_are_refused_before_loading_the_model(cli, tmp_path, command):
    (tmp_path / "a-file").write_text("x")
    assert_user_error(cli(*command, tmp_path / "a-file" / "out"), "is a file")
    assert_user_error(cli(*command, "/proc/robustedit-test/out"), "cannot be written")
    if command[0] != "edit":  # edit --save refuses any existing folder already
        assert_user_error(cli(*command, tmp_path / "a-file"), "is a file")


def test_evaluate_checks_editor_before_loading_the_model(cli, out_dir):
    assert_user_error(cli("evaluate", "--editor", "rom", "--dataset", "counterfact", "--limit", "1",
                          "--out", out_dir), "rome")
    assert not out_dir.exists()


def test_evaluate_checks_existing_records_before_loading_the_model(cli, out_dir):
    out_dir.mkdir()
    (out_dir / "records.jsonl").write_text('{"case_id": "0", "metrics": {}}\n')
    assert_user_error(cli("evaluate", "--editor", "rome", "--dataset", "counterfact", "--limit", "1",
                          "--out", out_dir), "--resume")


# --- edit: mistakes that need the model (integration) ------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("extra, fragments", [
    (("--editor", "rom"), ("did you mean", "'rome'")),
    (("--editor", "rome+xyz"), ("xyz",)),
    (("--set", "nosuchkey=1"), ("nosuchkey", "layer")),  # names the key, lists the known ones
    (("--set", "layr=5"), ("layr", "did you mean", "'layer'")),
    (("--set", "layer=abc"), ("layer", "abc")),
    (("--set", "layer=99"), ("layer", "99", "range")),
], ids=["unknown-editor", "unknown-addon", "unknown-key", "misspelt-key", "wrong-type", "layer-out-of-range"])
def test_edit_editor_and_config_errors(cli, tmp_path, save_dir, extra, fragments):
    assert_user_error(cli(*_edit(*extra, "--save", save_dir)), *fragments)
    assert not save_dir.exists()
    _nothing_written(tmp_path)


@pytest.mark.integration
def test_edit_says_when_the_fact_is_already_known_and_when_an_edit_does_not_take(cli):
    known = cli(*_edit("--set", "v_num_grad_steps=1", "--set", "v_lr=1e-9", prompt="The capital of {} is",
                       subject="France", target="Paris"))
    assert known.code == 0, known.describe()
    assert "already predicts ' Paris'" in known.out
    failed = cli(*_edit("--set", "v_num_grad_steps=1", "--set", "v_lr=1e-9"))  # a step too small to move anything
    assert failed.code == 0, failed.describe()
    assert "did not take" in failed.out and "' English'" in failed.out


@pytest.mark.integration
def test_edit_config_file_missing(cli, tmp_path, save_dir):
    assert_user_error(cli(*_edit("--config", tmp_path / "nope.yaml", "--save", save_dir)), "nope.yaml")
    assert not save_dir.exists()
    _nothing_written(tmp_path)


@pytest.mark.integration
def test_edit_config_file_invalid_yaml(cli, tmp_path, save_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("layer: [4\nv_lr: : 0.5\n")
    assert_user_error(cli(*_edit("--config", bad, "--save", save_dir)), "bad.yaml", "yaml")
    assert not save_dir.exists()
    _nothing_written(tmp_path, allowed=("bad.yaml",))


# --- evaluate -----------------------------------------------------------------------------------


def _evaluate(*extra: str, dataset: str = "counterfact"):
    return ("evaluate", "--editor", "rome", "--dataset", dataset, *extra)


def test_evaluate_unknown_bundled_dataset(cli, tmp_path, out_dir):
    assert_user_error(cli(*_evaluate("--out", out_dir, dataset="counterfat")),
                      "counterfat", "did you mean", "'counterfact'")
    _nothing_written(tmp_path)


def test_evaluate_dataset_path_missing(cli, tmp_path, out_dir):
    missing = tmp_path / "data" / "cases.json"
    assert_user_error(cli(*_evaluate("--out", out_dir, dataset=str(missing))), "cases.json")
    _nothing_written(tmp_path)


def test_evaluate_dataset_of_unknown_format_names_expected_fields(cli, tmp_path, out_dir):
    data = tmp_path / "weird.json"
    data.write_text(json.dumps([{"question": "Who?", "answer": "Me"}]))
    line = assert_user_error(cli(*_evaluate("--out", out_dir, dataset=str(data))), "format")
    # the fields of the contract's schemas, and what the file had instead
    for field in ("requested_rewrite", "target_new", "subject", "question"):
        assert field in line, f"{field!r} not named in {line!r}"
    _nothing_written(tmp_path, allowed=("weird.json",))


@pytest.mark.parametrize("text", ['[{"prompt": "x {}", ', "", "{'single': 'quotes'}"],
                         ids=["truncated", "empty", "python-literal"])
def test_evaluate_dataset_invalid_json(cli, tmp_path, out_dir, text):
    data = tmp_path / "broken.json"
    data.write_text(text)
    line = assert_user_error(cli(*_evaluate("--out", out_dir, dataset=str(data))), "broken.json")
    if text.strip():
        assert "invalid json" in line.lower()
    _nothing_written(tmp_path, allowed=("broken.json",))


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_evaluate_limit_must_be_positive(cli, tmp_path, out_dir, limit):
    assert_user_error(cli(*_evaluate("--limit", limit, "--out", out_dir)), "--limit")
    _nothing_written(tmp_path)


def test_evaluate_resume_needs_out(cli, tmp_path):
    assert_user_error(cli(*_evaluate("--resume", "--limit", "1")), "--resume", "--out")
    _nothing_written(tmp_path)  # in particular no default runs/ folder


@pytest.mark.parametrize("args, fragments", [
    (("--batch-size", "4"), ("--batch-size", "--sequential")),
    (("--checkpoints", "1,10"), ("--checkpoints", "--sequential")),
    (("--sequential", "0"), ("--sequential",)),
    (("--sequential", "5", "--batch-size", "10"), ("--batch-size", "larger")),
    (("--sequential", "5", "--checkpoints", "2,9"), ("--checkpoints",)),
    (("--sequential", "5", "--checkpoints", "two"), ("--checkpoints", "two")),
    (("--sequential", "5", "--limit", "5"), ("--limit",)),
    (("--sequential", "5", "--resume"), ("resumed",)),
    (("--sequential", "5", "--robustness"), ("--robustness", "--sequential")),
    (("--sequential", "5", "--known-only"), ("--known-only", "--sequential")),
], ids=["batch-alone", "checkpoints-alone", "zero", "batch-too-big", "checkpoint-range", "checkpoint-text",
        "limit", "resume", "robustness", "known-only"])
def test_evaluate_sequential_option_errors(cli, tmp_path, out_dir, args, fragments):
    assert_user_error(cli(*_evaluate(*args, "--out", out_dir)), *fragments)
    _nothing_written(tmp_path)


@pytest.mark.integration
def test_evaluate_refuses_an_out_folder_with_records(cli, tmp_path, out_dir):
    out_dir.mkdir()
    records = out_dir / "records.jsonl"
    records.write_text('{"case_id": "0", "metrics": {"efficacy": 1.0}}\n{"case_id": "1", "metr')  # torn line
    before = _tree(out_dir)
    assert_user_error(cli(*_evaluate("--limit", "1", "--out", out_dir)), "--resume")
    assert _tree(out_dir) == before, "the existing records were touched"
    _nothing_written(tmp_path, allowed=("run-out",))


@pytest.mark.integration
def test_evaluate_unknown_editor(cli, tmp_path, out_dir):
    assert_user_error(cli("evaluate", "--editor", "memitt", "--dataset", "counterfact", "--limit", "1",
                          "--out", out_dir), "memitt", "rome")
    _nothing_written(tmp_path)


# --- stats, reproduce ---------------------------------------------------------------------------


@pytest.mark.parametrize("layers", ["a,b", "4,x", "1.5"])
def test_stats_layers_must_be_integers(cli, tmp_path, layers):
    assert_user_error(cli("stats", "--layers", layers), "--layers", layers)
    _nothing_written(tmp_path)


def test_reproduce_without_name_lists_experiments(cli, tmp_path):
    from robustedit.experiments import EXPERIMENTS

    result = cli("reproduce")
    assert result.exc is None and result.code == 0, result.describe()
    assert "experiments" in result.out.lower()
    for name in EXPERIMENTS.names():
        assert name in result.out
    assert result.err_lines == [], result.describe()
    _nothing_written(tmp_path)


def test_reproduce_unknown_name(cli, tmp_path):
    line = assert_user_error(cli("reproduce", "no-such-experiment", "--out", tmp_path / "out"),
                             "no-such-experiment")
    from robustedit.experiments import EXPERIMENTS

    for name in EXPERIMENTS.names():
        assert name in line
    _nothing_written(tmp_path)


@pytest.mark.parametrize("args, fragments", [
    (("--only", "memit,romee"), ("romee", "memit-nullspace")),
    (("--limit", "0"), ("--limit",)),
    (("--config", "x.yaml"), ("--set",)),
    (("--dataset", "rep-valid"), ("--dataset", "counterfact-val")),
    (("--all-cases",), ("--all-cases", "rep-table")),
], ids=["unknown-variant", "limit", "config", "dataset", "all-cases"])
def test_reproduce_sequential_errors_before_loading_the_model(cli, tmp_path, args, fragments):
    assert_user_error(cli("reproduce", "sequential", "--out", tmp_path / "out", *args), *fragments)
    _nothing_written(tmp_path)


@pytest.mark.parametrize("args, fragments", [
    (("--only", "rome,romee"), ("romee", "memit+rep", "rome+rep-paper", "tau-sweep")),
    (("--config", "x.yaml"), ("--set",)),
], ids=["unknown-variant", "config"])
def test_reproduce_rep_table_errors_before_loading_the_model(cli, tmp_path, args, fragments):
    assert_user_error(cli("reproduce", "rep-table", "--out", tmp_path / "out", *args), *fragments)
    _nothing_written(tmp_path)


@pytest.mark.parametrize("args, fragments", [
    (("sss-table", "--only", "ft-l,mendd"), ("mendd", "serac+sss")),
    (("sss-table", "--dataset", "zsre"), ("--dataset", "counterfact")),
    (("sss-table", "--config", "x.yaml"), ("--set",)),
    (("sss-c-sweep", "--only", "mend+sss"), ("one training per C",)),
    (("sss-c-sweep", "--all-cases"), ("--all-cases",)),
], ids=["unknown-variant", "dataset", "config", "trained-editor", "all-cases"])
def test_reproduce_sss_errors_before_loading_the_model(cli, tmp_path, args, fragments):
    assert_user_error(cli("reproduce", *args, "--out", tmp_path / "out"), *fragments)
    _nothing_written(tmp_path)


@pytest.mark.parametrize("args, fragments", [
    (("histogram",), ("histogram", "similarity")),
    (("pca", "--limit", "0"), ("--limit",)),
    (("prefixes", "--n-tokens", "10"), ("--n-tokens",)),
    (("values", "--set", "layer=99x"), ("layer",)),
], ids=["unknown", "limit", "n-tokens", "bad-set"])
def test_analyze_errors_before_loading_the_model(cli, tmp_path, args, fragments):
    assert_user_error(cli("analyze", *args, "--out", tmp_path / "out"), *fragments)
    _nothing_written(tmp_path)


@pytest.mark.parametrize("args, fragments", [
    (("rome",), ("trainable editor", "rome", "mend", "serac")),
    (("mend", "--set", "train.steps=0"), ("train.steps",)),
    (("mend", "--set", "train.edit_loss_on=everything"), ("edit_loss_on", "rephrase")),
    (("serac", "--set", "classifier=bert"), ("classifier", "minilm")),
    (("serac+sss", "--set", "sss.coefficient=2"), ("sss.coefficient",)),
    (("mend", "--seed", "1", "--set", "train.seed=2"), ("--seed 1", "train.seed=2", "disagree")),
], ids=["not-trainable", "steps", "edit-loss-on", "classifier", "sss-coefficient", "two-seeds"])
def test_train_errors_before_loading_the_model(cli, tmp_path, args, fragments):
    assert_user_error(cli("train", *args, "--out", tmp_path / "out"), *fragments)
    _nothing_written(tmp_path)


# --- command-line usage mistakes (parsed by typer/click) ---------------------------------------



@pytest.mark.parametrize("args, fragment", [
    (("edit", "--prompt", "x {}", "--subject", "S"), "--target"),          # missing required option
    (("edit", *DARRIEUX, "--no-such-option"), "--no-such-option"),        # unknown option
    (("evaluate", "--editor", "rome", "--dataset", "counterfact", "--limit", "many"), "--limit"),  # not an int
    (("no-such-command",), "no-such-command"),
], ids=["missing-option", "unknown-option", "bad-int", "unknown-command"])
def test_usage_errors_are_one_line(cli, tmp_path, args, fragment):
    assert_user_error(cli(*args), fragment)
    _nothing_written(tmp_path)


def test_no_arguments_shows_help_without_traceback(cli):
    result = cli()
    assert result.exc is None, result.describe()
    assert result.code in (0, 2), result.describe()
    assert "Traceback" not in result.err
    assert re.search(r"\bevaluate\b", result.out + result.err), result.describe()


# --- the console path ---------------------------------------------------------------------------


def test_console_error_is_one_line_without_traceback(tmp_path):
    """``python -m robustedit.cli``: the real process, its real stderr, its exit status."""
    env = {**os.environ, "ROBUSTEDIT_CACHE": str(tmp_path / "cache")}
    save = tmp_path / "saved"
    proc = subprocess.run(
        [sys.executable, "-m", "robustedit.cli", "edit", "--prompt", "The mother tongue of X is",
         "--subject", "Danielle Darrieux", "--target", "English", "--save", str(save)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(err) == 1 and err[0].startswith("error: ") and "{}" in err[0], proc.stderr
    assert not save.exists()


# --- trace --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (("--prompt", "no placeholder", "--subject", "S"), "{}"),
    (("--prompt", "The capital of {} is", "--subject", "France", "--kinds", "all,mpl"), "--kinds"),
    (("--prompt", "The capital of {} is", "--subject", "France", "--samples", "0"), "--samples"),
], ids=["no-placeholder", "bad-kind", "zero-samples"])
def test_trace_bad_input(cli, tmp_path, args, fragment):
    assert_user_error(cli("trace", *args, "--out", str(tmp_path / "t")), fragment)
    _nothing_written(tmp_path)


# --- generate, edit --file (issue 20): mistakes refused before the model loads ------------------------


def test_generate_mistakes_are_one_line_before_loading(cli, tmp_path):
    assert_user_error(cli("generate", "--prompt", "no braces", "--editor", "rome", "--subject", "S", "--target", "T"),
                      "{}")
    assert_user_error(cli("generate", "--prompt", "x", "--edit", tmp_path / "nowhere"), "not a folder")
    assert_user_error(cli("generate", "--prompt", "The {} is", "--editor", "rome", "--subject", "S"), "target")
    assert_user_error(cli("generate", "--prompt", "x", "--target", "T"), "editor")
    assert_user_error(cli("generate", "--prompt", "The {} is", "--editor", "romee", "--subject", "S", "--target", "T",
                          "--model", "nosuchmodel"), "romee")


def test_edit_file_mistakes_are_one_line_before_loading(cli, tmp_path, save_dir):
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"prompt": "The capital of {} is", "subject": "France", "target_new": "Rome"}\n'
                     '{"prompt": "{} plays", "subject": "Messi"}\n')
    assert_user_error(cli("edit", "--file", facts, "--save", save_dir), "line 2", "target_new")
    assert_user_error(cli("edit", "--file", tmp_path / "missing.json"), "missing.json")
    assert_user_error(cli("edit", "--file", facts, "--prompt", "The {} is"), "--file")
    assert_user_error(cli("edit", "--prompt", "The {} is", "--subject", "S"), "--target")
    facts.write_text('{"prompt": "The capital of {} is", "subject": "France", "target_new": "Rome"}\n')
    assert_user_error(cli("edit", "--file", facts, "--editor", "serac", "--save", save_dir), "cannot be saved")
    assert not save_dir.exists()


def test_export_mistakes_are_one_line_before_loading(cli, tmp_path):
    (tmp_path / "taken").mkdir()
    assert_user_error(cli("export", "--edit", tmp_path, "--out", tmp_path / "taken"), "already exists")
    assert_user_error(cli("export", "--edit", tmp_path / "nowhere", "--out", tmp_path / "hf"), "nowhere")
    assert not (tmp_path / "hf").exists()
