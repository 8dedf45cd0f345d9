"""Second-moment statistics C = E[k kᵀ] of the keys entering an MLP's down-projection.

ROME and MEMIT solve their updates with C⁻¹, so that an edit moves the layer least on the keys it
usually sees. We compute C from shipped Wikipedia text, running the model only up to the deepest
layer needed (the layers above cannot change these keys), for several layers in one pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from robustedit.errors import UserError
from robustedit.models.hooks import StopForward, hooked
from robustedit.models.load import LanguageModel
from robustedit.paths import cache_root
from robustedit.progress import progress
from robustedit.stats.cache import TensorCache
from robustedit.stats.corpus import CORPORA, corpus_hash, token_windows

log = logging.getLogger(__name__)
STATS_VERSION = 1  # bump when the way C is computed changes: old cache entries become unreadable


@dataclass(frozen=True)
class StatsConfig:
    """How the key statistics are gathered."""

    corpus: str = field(default="enwiki-sample", metadata={"help": "shipped corpus name"})
    n_tokens: int = field(default=200_000, metadata={"help": "tokens of corpus text to average over"})
    seq_len: int = field(default=256, metadata={"help": "tokens per window (no padding)"})
    batch_size: int = field(default=8, metadata={"help": "windows per forward pass"})

    def __post_init__(self) -> None:
        CORPORA.get(self.corpus)  # unknown corpus: did-you-mean error
        if self.n_tokens < self.seq_len or self.seq_len < 2 or self.batch_size < 1:
            raise ValueError("stats: need n_tokens >= seq_len >= 2 and batch_size >= 1")


def stats_key(lm: LanguageModel, layer: int, cfg: StatsConfig) -> dict:
    """Everything C depends on; any change gives another cache file."""
    return {
        "version": STATS_VERSION,
        "model": lm.fingerprint,
        "module": lm.spec.down_proj_path(layer),
        "corpus": cfg.corpus,
        "corpus_sha256": corpus_hash(cfg.corpus),
        "n_tokens": cfg.n_tokens,
        "seq_len": cfg.seq_len,
        "model_dtype": str(lm.dtype),
        "accumulate": "float64",
    }


@torch.no_grad()
def compute_second_moments(lm: LanguageModel, layers: list[int], cfg: StatsConfig, *, show_progress: bool = True) -> dict[int, torch.Tensor]:
    """E[k kᵀ] at each layer's down-projection input over the corpus, ``{layer: (d_in, d_in)}`` float64.

    One pass over the corpus serves every layer; the pass stops once the deepest layer's keys are
    captured. Per batch the outer products are summed in float32 (a single GEMM, whatever the model's
    dtype) and accumulated in float64, in place (memory: d_in² × 8 bytes per layer plus one
    d_in² × 4 float32 product; benchmarks/gpu_memory.py).
    """
    layers = sorted({lm.check_layer(i) for i in layers})
    windows = token_windows(lm.tokenizer, cfg.corpus, cfg.n_tokens, cfg.seq_len)
    sums: dict[int, torch.Tensor] = {}
    count = 0
    batch_keys: dict[int, torch.Tensor] = {}

    def make_pre(layer: int, last: bool):
        def pre(_mod, args):
            batch_keys[layer] = args[0]
            if last:
                raise StopForward

        return pre

    hooks = [hooked(lm.down_proj(i), pre=make_pre(i, i == layers[-1])) for i in layers]
    for h in hooks:
        h.__enter__()
    try:
        bar = progress(range(0, len(windows), cfg.batch_size), desc=f"key statistics, layers {layers}", disable=not show_progress)
        for start in bar:
            ids = windows[start : start + cfg.batch_size].to(lm.device)
            try:
                lm.model(input_ids=ids, use_cache=False)
            except StopForward:
                pass
            for layer, k in batch_keys.items():
                k = k.reshape(-1, k.shape[-1]).float()  # (B*T, d_in); bf16 products would lose C
                outer = k.T @ k  # float32, summed over B*T tokens
                if layer in sums:  # added into the float64 sum in place: the same values as converting
                    sums[layer].add_(outer)  # first, without two more d_in² float64 temporaries
                else:
                    sums[layer] = outer.to(torch.float64)
            batch_keys.clear()  # not held through the next batch's forward pass
            count += ids.numel()
    finally:
        for h in reversed(hooks):
            h.__exit__(None, None, None)
    return {layer: (s / count).cpu() for layer, s in sums.items()}


def second_moment(lm: LanguageModel, layer: int, cfg: StatsConfig | None = None, *, cache: TensorCache | None = None,
                  show_progress: bool = True) -> torch.Tensor:
    """C for one layer, from the disk cache or computed and cached."""
    return second_moments(lm, [layer], cfg, cache=cache, show_progress=show_progress)[layer]


def second_moments(lm: LanguageModel, layers: list[int], cfg: StatsConfig | None = None, *, cache: TensorCache | None = None,
                   show_progress: bool = True) -> dict[int, torch.Tensor]:
    """C for several layers; the missing ones are computed together in one pass."""
    cfg = cfg or StatsConfig()
    cache = cache or TensorCache(cache_root() / "stats")
    found = {i: cache.load("mom2", stats_key(lm, i, cfg)) for i in layers}
    for i, c in found.items():
        if c is not None and not bool(torch.isfinite(c).all()):
            raise UserError(f"the cached key statistics of layer {i} of {lm.name} hold non-finite values; delete "
                            f"{cache.path('mom2', stats_key(lm, i, cfg))} to recompute them")
    missing = [i for i, c in found.items() if c is None]
    if missing:
        log.info("computing key statistics for layers %s over %d tokens of %s", missing, cfg.n_tokens, cfg.corpus)
        for i, c in compute_second_moments(lm, missing, cfg, show_progress=show_progress).items():
            if not bool(torch.isfinite(c).all()):  # the model itself overflows on the corpus: nothing to cache
                raise UserError(f"the key statistics of layer {i} of {lm.name} came out non-finite (the model "
                                f"overflows on the corpus in {lm.dtype}?); try --dtype float32")
            cache.save("mom2", stats_key(lm, i, cfg), c)
            found[i] = c
    return found
