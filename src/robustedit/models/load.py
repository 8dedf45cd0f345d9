"""Load a causal LM by name (embedded), local Hugging Face directory, or hub id.

Weights go straight to the requested device and dtype: transformers builds the model on the meta
device and fills it from the (memory-mapped) safetensors files, already cast; on an accelerator
``device_map`` places every tensor there as it is read, so a 7B model never has a full float32 or
CPU copy (docs/gpu.md).

The fingerprint names the weights (it keys cached statistics, trained editors and saved edits).
For an embedded model it is the GGUF file's SHA-256; for a model from a folder it is the hash of
every loaded weight (:func:`weights_fingerprint`), computed on the first load only and then read
back from ``<cache>/fingerprints``, keyed by the folder and the (name, size, mtime) of its weight
files and the dtype (:func:`cached_fingerprint`): a second load of a 7B model reads no weight
byte for it, and the value stays the one earlier versions computed at every load, so nothing
cached under it goes stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from robustedit.errors import UserError
from robustedit.models.embedded import EMBEDDED, ensure_embedded
from robustedit.models.specs import ArchSpec, spec_for
from robustedit.paths import cache_root

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
    """BLAKE2 hash of every parameter's name, dtype, shape and bytes (~1 s for 135M floats; one
    tensor at a time is copied to the CPU, so a model on an accelerator needs no second copy)."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in model.state_dict().items():
        t = p.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(memoryview(t.view(torch.uint8).numpy()) if t.numel() else b"")
    return h.hexdigest()


FINGERPRINT_VERSION = 1  # of the cache entry's key below; the fingerprint's value never changes with it
# Files whose bytes become the weights (or say how): a change to any of them is another model.
WEIGHT_FILE_PATTERNS = ("config.json", "*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json",
                        "*.pt", "*.pth")


def weight_files_key(folder: Path, dtype: str) -> dict | None:
    """What the weights loaded from ``folder`` in ``dtype`` depend on, without reading them: the
    folder, each weight file's name, size and modification time (symlinks followed, as in the Hugging
    Face cache), the dtype. None if the folder holds no weight file."""
    folder = Path(folder).resolve()
    names = sorted({p.name for pattern in WEIGHT_FILE_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    files = []
    for name in names:
        st = (folder / name).stat()  # follows a symlink to its blob
        files.append([name, st.st_size, st.st_mtime_ns])
    if not any(n != "config.json" for n, _, _ in files):
        return None
    return {"version": FINGERPRINT_VERSION, "folder": str(folder), "files": files, "dtype": dtype}


def cached_fingerprint(folder: Path | None, dtype: str, compute: Callable[[], str]) -> str:
    """``compute()`` (the weights' hash), computed once per (folder, weight files, dtype) and read
    back from ``<cache>/fingerprints`` afterwards. A weight file rewritten in place gets another size
    or modification time, so a stale entry is never read; an unwritable cache only costs the hash.
    """
    key = weight_files_key(folder, dtype) if folder is not None else None
    if key is None:
        return compute()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    path = cache_root() / "fingerprints" / f"{digest}.json"
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") == key and isinstance(stored.get("fingerprint"), str):
            return stored["fingerprint"]
    except (OSError, ValueError, AttributeError):
        pass  # absent or unreadable: computed again and rewritten below
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")  # workers may write the same entry at once
        with os.fdopen(fd, "w") as f:
            json.dump({"key": key, "fingerprint": value}, f)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not cache the model fingerprint in %s (%s); it is computed again at each load", path, e)
    return value


def weights_folder(source: str | Path) -> Path | None:
    """The local folder the weights of ``source`` (a folder or a hub id) were read from, if known
    (a hub id's snapshot in the Hugging Face cache, found without the network)."""
    if Path(source).is_dir():
        return Path(source)
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(str(source), "config.json")
    except Exception:  # not a valid repo id, no cache: the weights are hashed instead
        return None
    return Path(found).parent if isinstance(found, str) else None


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
    # On an accelerator every weight is placed there as it is read (accelerate is a dependency);
    # on the CPU the memory-mapped files are read into the model's tensors, already cast.
    placement = {} if device == "cpu" else {"device_map": {"": device}}
    try:
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **placement)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"could not load model {name_or_path!r}: {first}") from None
    model.to(device)  # a no-op where device_map placed it
    if name_or_path in EMBEDDED:  # the GGUF hash already names these weights exactly
        fingerprint = f"{name_or_path}:{EMBEDDED.get(name_or_path).sha256[:32]}:{dtype}"
    else:
        fingerprint = cached_fingerprint(weights_folder(source), str(torch_dtype).removeprefix("torch."),
                                         lambda: weights_fingerprint(model))
    return wrap(model, tok, name_or_path, fingerprint)


def load_seeded(model: str = "smollm2", dtype: str = "float32", device: str = "cpu", seed: int = 0) -> LanguageModel:
    """Seed every generator, then load ``model``: the setup every command and experiment shares."""
    from robustedit.seeding import seed_everything

    seed_everything(seed)
    return load_model(model, dtype=dtype, device=device)
