"""Load a causal LM by name (embedded), local Hugging Face directory, or hub id."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from robustedit.errors import UserError
from robustedit.models.embedded import EMBEDDED, ensure_embedded
from robustedit.models.specs import ArchSpec, spec_for

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LanguageModel:
    """A model, its tokenizer and its architecture spec, plus a fingerprint of its weights.

    The fingerprint is taken at load time, before any edit, so statistics cached under it always
    describe the unedited model.
    """

    model: nn.Module
    tokenizer: object
    spec: ArchSpec
    name: str
    fingerprint: str

    def module(self, path: str) -> nn.Module:
        return self.model.get_submodule(path)

    @property
    def n_layers(self) -> int:
        return len(self.module(self.spec.layers))

    def check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.n_layers:
            raise UserError(f"layer {layer} is out of range: {self.name} has layers 0..{self.n_layers - 1}")
        return layer

    def layer(self, layer: int) -> nn.Module:
        """Decoder layer ``layer``: its output is the residual stream after that layer."""
        return self.module(self.spec.layer_path(self.check_layer(layer)))

    @property
    def max_positions(self) -> int | None:
        """The longest input the model was built for (learned position tables end there), if it says."""
        config = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") else self.model.config
        value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        return int(value) if value else None

    @property
    def d_model(self) -> int:
        """Width of the residual stream (the embedding width in every architecture of the table)."""
        return int(self.module(self.spec.embeddings).weight.shape[1])

    def down_proj(self, layer: int) -> nn.Module:
        return self.module(self.spec.down_proj_path(self.check_layer(layer)))

    def down_proj_weight_name(self, layer: int) -> str:
        return self.spec.down_proj_path(self.check_layer(layer)) + ".weight"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def base(self) -> nn.Module:
        return self.module(self.spec.base)

    @property
    def lm_head(self) -> nn.Module:
        return self.module(self.spec.lm_head)


def weights_fingerprint(model: nn.Module) -> str:
    """BLAKE2 hash of every parameter's name, dtype, shape and bytes (~1 s for 135M floats)."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in model.state_dict().items():
        t = p.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(memoryview(t.view(torch.uint8).numpy()) if t.numel() else b"")
    return h.hexdigest()


def wrap(model: nn.Module, tokenizer, name: str, fingerprint: str | None = None) -> LanguageModel:
    """Wrap an already-built ``*ForCausalLM`` (used by tests with tiny random models)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if getattr(tokenizer, "pad_token_id", None) is None and getattr(tokenizer, "eos_token", None):
        tokenizer.pad_token = tokenizer.eos_token
    spec = spec_for(model.config.model_type)
    return LanguageModel(model, tokenizer, spec, name, fingerprint or weights_fingerprint(model))


def load_model(name_or_path: str = "smollm2", *, dtype: str = "float32", device: str = "cpu") -> LanguageModel:
    """Load an embedded model by name, a local HF directory, or (with network) a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
        if device != "mps" or not torch.backends.mps.is_available():
            raise UserError(f"device {device!r} is not available on this machine")
    torch_dtype = DTYPES[dtype]
    if name_or_path in EMBEDDED:
        source = ensure_embedded(name_or_path)
    elif Path(name_or_path).is_dir():
        source = Path(name_or_path)
        if not (source / "config.json").exists():
            raise UserError(f"{source} is not a Hugging Face model directory (no config.json)")
    elif "/" in name_or_path and not Path(name_or_path).exists():
        source = name_or_path  # a hub id: only works where a hub is reachable
    else:
        raise UserError(
            f"unknown model {name_or_path!r}: use an embedded name ({', '.join(EMBEDDED.names())}), "
            "a local Hugging Face directory, or a hub id like 'owner/name'"
        )
    try:
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"could not load model {name_or_path!r}: {first}") from None
    model.to(device)
    fingerprint = None
    if name_or_path in EMBEDDED:  # the GGUF hash already names these weights exactly
        fingerprint = f"{name_or_path}:{EMBEDDED.get(name_or_path).sha256[:32]}:{dtype}"
    return wrap(model, tok, name_or_path, fingerprint)
