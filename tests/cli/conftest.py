"""Fixtures for the command-line tests: run ``robustedit.cli.main()`` in-process and inspect it.

* ``cli(*args)`` runs the CLI with ``sys.argv`` patched and returns a :class:`CliResult` (exit
  code, stdout, stderr, and any exception that escaped ``main()``, which a user would see as a
  traceback).
* Every test runs in its own ``tmp_path`` as the working directory, so that a default output
  folder (``runs/...``) can never land in the checkout.
* Tests **not** marked ``integration`` must never load the model: loading the embedded model is
  replaced by raising :class:`ModelWouldLoad`. A check that the CLI only makes after loading the
  model therefore cannot pass as a fast test; it belongs in an ``integration`` test.
* ``integration`` tests load the real embedded model from the default cache
  (``~/.cache/robustedit``; the root conftest leaves ``ROBUSTEDIT_CACHE`` alone for them), once
  per session, and the CLI's ``load_model`` is pointed at that instance. None of those tests
  edits the model (each fails on a user mistake first), so sharing it is safe.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest


class ModelWouldLoad(Exception):
    """Raised instead of loading the model in a test not marked ``integration``."""


@dataclass
class CliResult:
    code: int | None
    out: str
    err: str
    exc: BaseException | None = None  # escaped main(): the user would see a traceback

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def describe(self) -> str:
        return f"exit code {self.code!r}, exception {self.exc!r}\n--- stdout ---\n{self.out}\n--- stderr ---\n{self.err}"


def assert_user_error(result: CliResult, *fragments: str) -> str:
    """Exit status 2, one line ``error: ...`` on stderr, no traceback; returns that line.

    Every fragment must occur in the line (case-insensitive).
    """
    assert result.exc is None, f"main() raised instead of reporting a user error:\n{result.describe()}"
    assert result.code == 2, result.describe()
    assert "Traceback" not in result.err and "Traceback" not in result.out, result.describe()
    assert len(result.err_lines) == 1, f"expected exactly one line on stderr:\n{result.describe()}"
    line = result.err_lines[0]
    assert line.startswith("error: "), result.describe()
    for fragment in fragments:
        assert fragment.lower() in line.lower(), f"{fragment!r} not in {line!r}"
    return line


@pytest.fixture(autouse=True)
def _cli_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")  # wide help panels: option names are never cut


@pytest.fixture(scope="session")
def real_lm():
    """The embedded model, loaded once per session from the user's cache."""
    from robustedit.models.load import load_model

    return load_model()


@pytest.fixture(autouse=True)
def _model_policy(request, monkeypatch):
    import robustedit.models.load as load

    if request.node.get_closest_marker("integration") is None:
        def refuse(name, *args, **kwargs):
            raise ModelWouldLoad(f"the CLI would load the embedded model {name!r} here")

        monkeypatch.setattr(load, "ensure_embedded", refuse)
        return
    lm = request.getfixturevalue("real_lm")
    real_load = load.load_model

    def shared(name_or_path="smollm2", *, dtype="float32", device="cpu"):
        if (name_or_path, dtype, device) == ("smollm2", "float32", "cpu"):
            return lm
        return real_load(name_or_path, dtype=dtype, device=device)

    monkeypatch.setattr(load, "load_model", shared)


@pytest.fixture
def cli(monkeypatch, capsys):
    """``cli("edit", "--prompt", ...)`` → CliResult of ``robustedit.cli.main()``."""
    import robustedit.cli

    def run(*args: str) -> CliResult:
        capsys.readouterr()  # drop anything printed before
        monkeypatch.setattr(sys, "argv", ["robustedit", *map(str, args)])
        code: int | None = 0
        exc = None
        try:
            robustedit.cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) or e.code is None else 1
        except ModelWouldLoad:
            raise
        except Exception as e:  # noqa: BLE001 - a traceback for the user; the test reports it
            code, exc = None, e
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err, exc)

    return run
