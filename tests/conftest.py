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
import torch

sys.path.insert(0, str(Path(__file__).parent / "unit"))  # the `tiny` helpers, shared with the test files

import tiny  # noqa: E402

from robustedit.models.load import weights_fingerprint  # noqa: E402

os.environ["ROBUSTEDIT_QUIET"] = "1"


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("robustedit-cache")


@pytest.fixture(autouse=True)
def _test_environment(request, session_cache_dir, monkeypatch):
    monkeypatch.setenv("ROBUSTEDIT_QUIET", "1")
    if request.node.get_closest_marker("integration") is not None:
        yield
        return
    monkeypatch.setenv("ROBUSTEDIT_CACHE", str(session_cache_dir))
    # Tiny models gain nothing from threads, and on a busy machine every matmul then waits for a
    # second core (~16 ms instead of ~10 µs for a 25×32 @ 32×64 product).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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

    yield make
    # A test that left an edit applied would silently change every later test's model.
    changed = [a for a, lm in built.items() if weights_fingerprint(lm.model) != lm.fingerprint]
    assert not changed, f"a test left the shared tiny models changed: {changed}"


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer, tmp_path_factory) -> Path:
    """The tiny Llama saved as a Hugging Face folder (``--model DIR`` in subprocesses and workers)."""
    return tiny.save_tiny("llama", tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(params=tiny.ARCHITECTURES)
def arch(request) -> str:
    return request.param


@pytest.fixture
def tiny_lm(arch, tiny_lm_factory):
    return tiny_lm_factory(arch)
