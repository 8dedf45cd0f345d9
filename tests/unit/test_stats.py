"""Key statistics C = E[k kᵀ] and their disk cache: keyed so a stale entry cannot be read."""

from __future__ import annotations

import copy
import dataclasses
import logging

import pytest
import torch

import robustedit.stats.covariance as cov
from robustedit.models.hooks import capture_input
from robustedit.models.load import LanguageModel
from robustedit.paths import cache_root
from robustedit.stats.cache import TensorCache
from robustedit.stats.corpus import token_windows
from robustedit.stats.covariance import (
    StatsConfig,
    compute_second_moments,
    second_moment,
    second_moments,
    stats_key,
)

CFG = StatsConfig(n_tokens=1024, seq_len=32, batch_size=4)


@pytest.fixture
def lm(tiny_lm_factory):
    return tiny_lm_factory("llama")


@pytest.fixture
def cache(tmp_path) -> TensorCache:
    return TensorCache(tmp_path / "stats")


def d_mlp(lm) -> int:
    return lm.model.config.intermediate_size


# --- the key ------------------------------------------------------------------------------------


def test_stats_key_changes_with_everything_c_depends_on(lm):
    base = stats_key(lm, 1, CFG)
    assert stats_key(lm, 1, CFG) == base  # deterministic
    other_weights = dataclasses.replace(lm, fingerprint="another-model")
    # Same fingerprint, other dtype (a copy: casting the shared model back would round its weights).
    other_dtype = LanguageModel(copy.deepcopy(lm.model).to(torch.bfloat16), lm.tokenizer, lm.spec, lm.name, lm.fingerprint)
    variants = {
        "fingerprint": stats_key(other_weights, 1, CFG),
        "layer": stats_key(lm, 0, CFG),
        "corpus": stats_key(lm, 1, dataclasses.replace(CFG, corpus="wikitext2-valid")),
        "n_tokens": stats_key(lm, 1, dataclasses.replace(CFG, n_tokens=2048)),
        "seq_len": stats_key(lm, 1, dataclasses.replace(CFG, seq_len=64)),
        "dtype": stats_key(other_dtype, 1, CFG),
    }
    for what, key in variants.items():
        assert key != base, what
        assert TensorCache(cache_root()).path("mom2", key) != TensorCache(cache_root()).path("mom2", base), what
    # batch_size only changes how the work is split, not C: it must share the entry
    assert stats_key(lm, 1, dataclasses.replace(CFG, batch_size=2)) == base


def test_stats_config_rejects_impossible_sizes():
    with pytest.raises(ValueError):
        StatsConfig(n_tokens=16, seq_len=32)
    with pytest.raises(ValueError):
        StatsConfig(batch_size=0)


# --- the cache ----------------------------------------------------------------------------------


def test_tensor_cache_round_trip(cache):
    key = {"model": "m", "layer": 3, "nested": {"a": [1, 2]}}
    value = torch.randn(5, 5, dtype=torch.float64)
    assert cache.load("mom2", key) is None
    path = cache.save("mom2", key, value)
    assert path == cache.path("mom2", key) and path.exists()
    assert list(path.parent.glob("*.tmp")) == []  # the temporary file was renamed into place
    got = cache.load("mom2", key)
    assert got.dtype == torch.float64 and torch.equal(got, value)
    assert cache.path("mom2", {**key, "layer": 4}) != path
    assert cache.path("other", key) != path


def test_corrupt_cache_file_is_deleted_and_not_trusted(cache, caplog):
    key = {"model": "m", "layer": 1}
    path = cache.path("mom2", key)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage, not safetensors" * 10)
    with caplog.at_level(logging.WARNING, logger="robustedit.stats.cache"):
        assert cache.load("mom2", key) is None
    assert not path.exists()
    assert any("unreadable" in r.getMessage() for r in caplog.records)


def test_truncated_cache_file_is_not_trusted(cache):
    key = {"model": "m", "layer": 1}
    path = cache.save("mom2", key, torch.ones(8, 8))
    path.write_bytes(path.read_bytes()[:-40])
    assert cache.load("mom2", key) is None
    assert not path.exists()


def test_entry_whose_stored_key_differs_is_not_returned(cache, caplog):
    key = {"model": "m", "layer": 1}
    foreign = {"model": "someone else", "layer": 1}
    # A file at key's path (say, a digest collision or a hand-copied file) that describes `foreign`.
    cache.save("mom2", foreign, torch.ones(3, 3))
    cache.path("mom2", foreign).rename(cache.path("mom2", key))
    with caplog.at_level(logging.WARNING, logger="robustedit.stats.cache"):
        assert cache.load("mom2", key) is None
    assert not cache.path("mom2", key).exists()
    assert caplog.records


def test_get_or_compute_computes_once(cache):
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(4.0)

    a = cache.get_or_compute("x", {"k": 1}, compute)
    b = cache.get_or_compute("x", {"k": 1}, compute)
    assert torch.equal(a, b) and len(calls) == 1


# --- second moments -----------------------------------------------------------------------------


def test_second_moment_is_symmetric_psd_with_key_shape(lm, cache):
    C = second_moment(lm, 1, CFG, cache=cache)
    n = d_mlp(lm)
    assert C.shape == (n, n) and C.dtype == torch.float64
    torch.testing.assert_close(C, C.T, atol=1e-12, rtol=0)
    eig = torch.linalg.eigvalsh(C)
    assert eig.min() >= -1e-9 * eig.max() and eig.max() > 0


def test_second_moment_equals_the_mean_outer_product_of_the_keys(lm, cache):
    windows = token_windows(lm.tokenizer, CFG.corpus, CFG.n_tokens, CFG.seq_len)  # (W, T)
    assert windows.shape == (CFG.n_tokens // CFG.seq_len, CFG.seq_len)
    with torch.no_grad(), capture_input(lm.down_proj(1)) as seen:
        lm.model(input_ids=windows)
    k = seen[0].reshape(-1, seen[0].shape[-1]).double()  # (W*T, d_in)
    torch.testing.assert_close(second_moment(lm, 1, CFG, cache=cache), k.T @ k / k.shape[0], atol=1e-6, rtol=1e-4)


def test_second_call_reads_the_cache(lm, cache, monkeypatch):
    real = cov.compute_second_moments
    calls = []

    def once(*args, **kwargs):
        calls.append(args[1])
        if len(calls) > 1:
            raise AssertionError("recomputed although the cache holds C")
        return real(*args, **kwargs)

    monkeypatch.setattr(cov, "compute_second_moments", once)
    first = second_moment(lm, 1, CFG, cache=cache)
    second = second_moment(lm, 1, CFG, cache=cache)
    assert calls == [[1]] and torch.equal(first, second)


def test_default_cache_lives_under_robustedit_cache(lm, session_cache_dir):
    assert cache_root() == session_cache_dir  # conftest isolates tests from ~/.cache
    cfg = dataclasses.replace(CFG, n_tokens=512)
    second_moment(lm, 0, cfg)
    assert TensorCache(session_cache_dir / "stats").path("mom2", stats_key(lm, 0, cfg)).exists()


def test_corrupt_cached_moment_is_recomputed(lm, cache, monkeypatch, caplog):
    fresh = second_moment(lm, 1, CFG, cache=TensorCache(cache.root / "elsewhere"))
    path = cache.path("mom2", stats_key(lm, 1, CFG))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a tensor file")
    real = cov.compute_second_moments
    calls = []
    monkeypatch.setattr(cov, "compute_second_moments", lambda *a, **k: calls.append(1) or real(*a, **k))
    with caplog.at_level(logging.WARNING, logger="robustedit.stats.cache"):
        C = second_moment(lm, 1, CFG, cache=cache)
    assert calls == [1]
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(C, fresh, atol=0, rtol=0)
    torch.testing.assert_close(cache.load("mom2", stats_key(lm, 1, CFG)), fresh, atol=0, rtol=0)  # rebuilt


def test_two_layers_in_one_pass_equal_each_alone(lm):
    both = compute_second_moments(lm, [2, 0], CFG, show_progress=False)
    assert sorted(both) == [0, 2]
    for layer in (0, 2):
        alone = compute_second_moments(lm, [layer], CFG, show_progress=False)[layer]
        torch.testing.assert_close(both[layer], alone, atol=1e-12, rtol=1e-10)
    assert not torch.allclose(both[0], both[2])


def test_second_moments_computes_only_the_missing_layers(lm, cache, monkeypatch):
    second_moment(lm, 0, CFG, cache=cache)
    real = cov.compute_second_moments
    asked = []
    monkeypatch.setattr(cov, "compute_second_moments", lambda lm_, layers, *a, **k: asked.append(list(layers)) or real(lm_, layers, *a, **k))
    out = second_moments(lm, [0, 1, 2], CFG, cache=cache)
    assert asked == [[1, 2]] and sorted(out) == [0, 1, 2]


def test_hooks_are_removed_after_computing(lm):
    modules = [lm.down_proj(i) for i in range(lm.n_layers)]
    before = [len(m._forward_pre_hooks) for m in modules]
    compute_second_moments(lm, [0, 1], CFG, show_progress=False)
    assert [len(m._forward_pre_hooks) for m in modules] == before
