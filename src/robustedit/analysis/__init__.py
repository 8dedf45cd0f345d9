"""Analyses of a model's internals: causal tracing (Meng et al. 2022, §2)."""

from robustedit.analysis.corrupt import (
    KINDS,
    Corruption,
    clean_states,
    embedding_std,
    patched_probability,
    prepare,
)
from robustedit.analysis.plots import plot_heatmap, read_json, write_json, write_trace
from robustedit.analysis.tracing import DEFAULT_WINDOW, TraceResult, layer_window, trace

__all__ = [
    "DEFAULT_WINDOW", "KINDS", "Corruption", "TraceResult", "clean_states", "embedding_std", "layer_window",
    "patched_probability", "plot_heatmap", "prepare", "read_json", "trace", "write_json", "write_trace",
]
