"""The ``robustedit`` command line: a thin layer over the Python API (docs/contract.md).

This module holds the app, the options every command shares and ``main``; the commands are in
``editing.py`` (edit, generate, export) and ``running.py`` (evaluate, stats, trace, analyze, train,
compare, reproduce, list).
"""

from __future__ import annotations

import logging
import shlex
import sys
from typing import Optional

import typer
from rich.console import Console

from robustedit.errors import UserError

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


from robustedit.cli import editing, running  # noqa: E402,F401  (register the commands)
