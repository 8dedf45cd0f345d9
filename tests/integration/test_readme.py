"""The README's Python example, run as written, gives the metrics the command line gives."""

from __future__ import annotations

import json
import re as regex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def python_example() -> str:
    """The first ```python block of the README's "Python API" section."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return regex.search(r"```python\n(.*?)```", section, flags=regex.S).group(1)


@pytest.mark.integration
def test_the_readme_python_example_matches_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example writes to runs/...
    namespace: dict = {}
    exec(compile(python_example(), "README.md (Python API)", "exec"), namespace)
    cli = subprocess.run([sys.executable, "-c", "import sys; from robustedit.cli import main; sys.exit(main())",
                          "evaluate", "--editor", "rome", "--dataset", "counterfact", "--limit", "5",
                          "--out", str(tmp_path / "cli")], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-2000:]
    expected = json.loads((tmp_path / "cli" / "summary.json").read_text())["metrics"]
    for where in ("runs/api-rome-5", "runs/plan-rome-5"):
        got = json.loads((tmp_path / where / "summary.json").read_text())["metrics"]
        assert got.keys() == expected.keys(), where
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-5, abs=1e-6), f"{where}: {name}"
    assert namespace["summary"]["n_cases"] == 5
