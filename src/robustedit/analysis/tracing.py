"""Causal tracing (Meng et al. 2022, §2): which hidden states carry a fact to the prediction.

Three runs of one prompt ``template.format(subject)`` whose clean next token is the answer:

1. **clean**: record every hidden state h_i^(l) (and every MLP / attention output);
2. **corrupted**: add Gaussian noise ε ~ N(0, ν²) to the embeddings of the subject's tokens, so
   the model loses the subject; P(answer) drops from ``clean_prob`` to ``corrupted_prob``;
3. **corrupted-with-restoration**: corrupted, except that one state (kind "all": the residual
   stream after layer l at token i; "mlp" / "attn": that sublayer's output, for a *window* of
   layers centred on l) is put back to its clean value. P(answer) there is the heatmap cell
   ``scores[kind][l, i]``: how much of the fact that state carries.

Choices (the reference is ``experiments/causal_trace.py`` of kmeng01/rome):

- ν = ``noise_factor`` (3, as in the paper) × the standard deviation of the embedding module's
  outputs. The reference measures it over the subjects of 1000 known facts; our default
  (:func:`~robustedit.analysis.corrupt.embedding_std`) measures it over the first 8192 tokens of
  the shipped Wikipedia sample, a model-wide constant that needs no dataset. Pass ``noise_std``
  to choose, e.g. ``embedding_std(lm, [c.request.subject for c in cases])`` (the reference's
  recipe); computing it once also saves ~0.1 s per trace.
- ``samples`` noise draws come from a ``torch.Generator`` seeded with ``seed`` and are shared by
  every restoration (the reference re-seeds its generator for each); a score is P(answer)
  averaged over the draws (the mean of the probabilities, as in the reference).
- Window for layer l: ``[l - w // 2, l + ceil(w / 2))`` clipped to the model (the reference's
  convention); default w = 1 for "all", 10 for "mlp" and "attn".
- Tokens before the subject never see the noise (the model is causal), so their clean and
  corrupted states are identical and restoring one changes nothing: those cells are set to
  ``corrupted_prob`` without running anything (the reference computes them; same values).

Speed: :mod:`robustedit.analysis.restore` runs all restorations at one token in batches of
``samples × restorations`` rows (at most ``max_rows``), over tokens t..T-1 only (the prefix is a
KV cache), each row from its first restored layer only, with the LM head on the last token only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from robustedit.analysis.corrupt import (
    KINDS,
    clean_states,
    component_path,
    patched_probability,
    prepare,
)
from robustedit.analysis.restore import CorruptedSuffix, restored_probs
from robustedit.errors import UserError
from robustedit.models.load import LanguageModel
from robustedit.progress import progress

log = logging.getLogger(__name__)

DEFAULT_WINDOW = {"all": 1, "mlp": 10, "attn": 10}


def layer_window(layer: int, window: int, n_layers: int) -> range:
    """Layers restored together for the heatmap cell of ``layer``: ``window`` layers centred on it."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


@dataclass
class TraceResult:
    """Heatmaps ``scores[kind]`` ``(n_layers, n_tokens)`` of P(answer) with that state restored."""

    model: str
    prompt: str
    subject: str
    tokens: list[str]
    subject_range: tuple[int, int]  # token range [s0, s1) of the subject
    answer: str
    answer_id: int
    clean_prob: float
    corrupted_prob: float
    scores: dict[str, torch.Tensor]
    windows: dict[str, int]
    samples: int
    noise_factor: float
    noise_std: float
    seed: int
    timing: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["subject_range"] = list(self.subject_range)
        d["scores"] = {k: v.tolist() for k, v in self.scores.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> TraceResult:
        d = dict(d)
        d["subject_range"] = tuple(d["subject_range"])
        d["scores"] = {k: torch.tensor(v, dtype=torch.float32) for k, v in d["scores"].items()}
        return cls(**d)


def _windows(kinds: list[str], window: int | Mapping[str, int] | None) -> dict[str, int]:
    if isinstance(window, Mapping):
        windows = {k: int(window.get(k, DEFAULT_WINDOW[k])) for k in kinds}
    else:
        windows = {k: DEFAULT_WINDOW[k] if window is None else int(window) for k in kinds}
    if min(windows.values(), default=1) < 1:
        raise UserError(f"windows must be at least 1 layer, got {windows}")
    return windows


@torch.no_grad()
def trace(
    lm: LanguageModel,
    template: str,
    subject: str,
    *,
    answer: int | str | None = None,
    kinds: Iterable[str] = KINDS,
    samples: int = 10,
    noise_factor: float = 3.0,
    noise_std: float | None = None,
    window: int | Mapping[str, int] | None = None,
    seed: int = 0,
    max_rows: int = 256,
) -> TraceResult:
    """Causal trace of ``template.format(subject)`` → ``answer`` for each state kind in ``kinds``.

    ``answer``: a token id, a string (its first token after the prompt counts) or None (the clean
    top-1 token). ``window``: layers restored together per cell, one number for every kind or a
    mapping per kind (default :data:`DEFAULT_WINDOW`). ``max_rows`` bounds the rows of one
    batched pass (memory: SmolLM2 needs ~50 KB per row and token of KV cache).
    """
    kinds = list(dict.fromkeys(kinds))
    if not kinds:
        raise UserError(f"no state kind to trace; choose from {', '.join(KINDS)}")
    for kind in kinds:
        component_path(lm.spec, kind, 0)  # rejects unknown kinds
    windows = _windows(kinds, window)
    t_start = time.perf_counter()
    corr = prepare(lm, template, subject, answer=answer, samples=samples, noise_factor=noise_factor,
                   noise_std=noise_std, seed=seed)
    clean, clean_prob = clean_states(lm, corr, kinds)
    corrupted_prob = patched_probability(lm, corr)
    t_setup = time.perf_counter()

    N, T, s0 = lm.n_layers, len(corr.token_ids), corr.subject_range[0]
    scores = {k: torch.full((N, T), corrupted_prob) for k in kinds}  # tokens before s0 stay so
    jobs = [(k, layer) for k in kinds for layer in range(N)]
    # Passes of at most max_rows rows, balanced (30 jobs at 25 per pass: 15 + 15, not 25 + 5).
    n_passes = -(-len(jobs) // max(1, max_rows // corr.samples))
    per_pass = -(-len(jobs) // n_passes)
    for t in progress(range(s0, T), desc="causal trace (tokens)"):
        run = CorruptedSuffix.build(lm, corr, t)
        for c in range(0, len(jobs), per_pass):
            chunk = jobs[c : c + per_pass]
            probs = restored_probs(lm, corr, clean, run, [(k, layer_window(layer, windows[k], N)) for k, layer in chunk])
            for (k, layer), p in zip(chunk, probs.tolist()):
                scores[k][layer, t] = p
    t_end = time.perf_counter()
    log.info("traced %d layers × %d tokens (%s) in %.1f s", N, T - s0, ", ".join(kinds), t_end - t_start)
    return TraceResult(
        model=lm.name,
        prompt=corr.prompt,
        subject=subject,
        tokens=[lm.tokenizer.decode([i]) for i in corr.token_ids],
        subject_range=corr.subject_range,
        answer=lm.tokenizer.decode([corr.answer_id]),
        answer_id=corr.answer_id,
        clean_prob=clean_prob,
        corrupted_prob=corrupted_prob,
        scores=scores,
        windows=windows,
        samples=corr.samples,
        noise_factor=float(noise_factor),
        noise_std=corr.noise_std,
        seed=seed,
        timing={"setup_s": t_setup - t_start, "restore_s": t_end - t_setup, "total_s": t_end - t_start},
    )
