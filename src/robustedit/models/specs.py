"""The architecture table (STYLE.md habit 2): where each part of a causal LM lives, per ``model_type``.

Editors never name ``model.layers[5].mlp.down_proj``; they ask the spec. Adding an architecture
is one entry here. Paths are attribute paths relative to the ``*ForCausalLM`` module; ``{}`` in a
per-layer path is the layer index.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from robustedit.errors import UserError
from robustedit.registry import Registry


@dataclass(frozen=True)
class ArchSpec:
    """Where the parts an editor touches live in one architecture.

    ``down_proj`` is the MLP's output projection W_out: its *input* is the key k (the MLP's
    hidden activations) and its output the value v written into the residual stream.
    ``weight_is_in_out`` is True for GPT-2's ``Conv1D``, whose weight is stored (in, out) instead
    of ``nn.Linear``'s (out, in).
    ``mlp`` and ``attn`` are the MLP and attention modules of a decoder layer, relative to the
    layer (causal tracing restores their outputs). ``mlp_in`` are the MLP's input projections,
    relative to the layer (MEND edits them too with ``matrices="mlp"``, as its reference does).
    """

    layers: str
    down_proj: str
    embeddings: str
    final_norm: str
    lm_head: str
    base: str
    weight_is_in_out: bool = False
    mlp: str = "mlp"
    attn: str = "self_attn"
    mlp_in: tuple[str, ...] = ("mlp.gate_proj", "mlp.up_proj")

    def stored(self, update):
        """A ``(d_out, d_in)`` weight update in this architecture's storage layout: the one place
        that knows GPT-2's ``Conv1D`` stores its weight transposed."""
        return update.T if self.weight_is_in_out else update

    def in_out(self, weight) -> tuple[int, int]:
        """``(d_in, d_out)`` of a stored weight, whatever its layout."""
        rows, cols = weight.shape
        return (rows, cols) if self.weight_is_in_out else (cols, rows)

    def layer_path(self, i: int) -> str:
        return f"{self.layers}.{i}"

    def down_proj_path(self, i: int) -> str:
        return f"{self.layers}.{i}.{self.down_proj}"


ARCHITECTURES: Registry[ArchSpec] = Registry("model architecture (model_type)")

_LLAMA_LIKE = ArchSpec(
    layers="model.layers",
    down_proj="mlp.down_proj",
    embeddings="model.embed_tokens",
    final_norm="model.norm",
    lm_head="lm_head",
    base="model",
)
for _name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2"):
    ARCHITECTURES.register(_name, _LLAMA_LIKE)
ARCHITECTURES.register("phi3", replace(_LLAMA_LIKE, mlp_in=("mlp.gate_up_proj",)))  # gate and up fused

_GPT2_LIKE = dict(layers="transformer.h", embeddings="transformer.wte", final_norm="transformer.ln_f",
                  lm_head="lm_head", base="transformer", attn="attn")
ARCHITECTURES.register("gpt2", ArchSpec(down_proj="mlp.c_proj", weight_is_in_out=True, mlp_in=("mlp.c_fc",),
                                        **_GPT2_LIKE))
ARCHITECTURES.register("gptj", ArchSpec(down_proj="mlp.fc_out", mlp_in=("mlp.fc_in",), **_GPT2_LIKE))
ARCHITECTURES.register(
    "gpt_neox",
    ArchSpec(
        layers="gpt_neox.layers",
        down_proj="mlp.dense_4h_to_h",
        embeddings="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        lm_head="lm_head",
        base="gpt_neox",
        attn="attention",
        mlp_in=("mlp.dense_h_to_4h",),
    ),
)
# Gemma 3 checkpoints with a vision tower report "gemma3"; their text model sits one level down.
ARCHITECTURES.register(
    "gemma3",
    ArchSpec(
        layers="model.language_model.layers",
        down_proj="mlp.down_proj",
        embeddings="model.language_model.embed_tokens",
        final_norm="model.language_model.norm",
        lm_head="lm_head",
        base="model.language_model",
    ),
)


def spec_for(model_type: str) -> ArchSpec:
    """The spec of a ``config.model_type``; unknown types get a one-line error listing the known."""
    if model_type not in ARCHITECTURES:
        raise UserError(
            f"architecture {model_type!r} is not in robustedit's table; supported: "
            f"{', '.join(ARCHITECTURES.names())} (add an entry in robustedit/models/specs.py)"
        )
    return ARCHITECTURES.get(model_type)
