"""Shared fixtures: an isolated cache directory, a tiny offline tokenizer, tiny random models.

Every test except those marked ``integration`` sees ``ROBUSTEDIT_CACHE`` pointing at a temporary
directory of this pytest session, so unit tests never read or write ``~/.cache``. Integration
tests keep the user's cache: they convert the real embedded model once and reuse it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "unit"))  # the `tiny` helpers, shared with the test files

import tiny  # noqa: E402

os.environ["ROBUSTEDIT_QUIET"] = "1"


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("robustedit-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(request, session_cache_dir, monkeypatch):
    if request.node.get_closest_marker("integration") is None:
        monkeypatch.setenv("ROBUSTEDIT_CACHE", str(session_cache_dir))
    monkeypatch.setenv("ROBUSTEDIT_QUIET", "1")


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """The tiny byte-level BPE tokenizer, trained once per session."""
    return tiny.build_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer"))


@pytest.fixture(scope="session")
def tiny_lm_factory(tokenizer):
    """``make(arch)``: the session's tiny model of ``arch`` (built once, shared).

    Tests that change weights must restore them (``applied`` / ``Backup.restore``); the
    ROME and architecture tests check that they do.
    """
    built: dict[str, object] = {}

    def make(arch: str):
        if arch not in built:
            built[arch] = tiny.tiny_model(arch, tokenizer)
        return built[arch]

    return make


@pytest.fixture(params=tiny.ARCHITECTURES)
def arch(request) -> str:
    return request.param


@pytest.fixture
def tiny_lm(arch, tiny_lm_factory):
    return tiny_lm_factory(arch)
