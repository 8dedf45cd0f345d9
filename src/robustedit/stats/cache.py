"""A disk cache of tensors keyed so that a stale entry cannot be read (STYLE.md habit 6).

The file name is a hash of the full key, and the key itself is stored in the file's metadata and
compared on every read; writes go to a temporary file renamed into place, so a killed run leaves
no half-written entry. A file that cannot be read or whose key differs is deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


class TensorCache:
    """Tensors on disk under ``root/<kind>-<sha256(key)>.safetensors``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: dict) -> Path:
        return self.root / f"{kind}-{key_digest(key)}.safetensors"

    def load(self, kind: str, key: dict) -> torch.Tensor | None:
        path = self.path(kind, key)
        if not path.exists():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                stored = json.loads((f.metadata() or {}).get("key", "null"))
            if stored != json.loads(json.dumps(key)):
                raise ValueError("key mismatch")
            return load_file(str(path))["value"]
        except Exception as e:  # corrupt, truncated or foreign file: never trust it
            log.warning("cache file %s is unreadable (%s); rebuilding it", path.name, e)
            path.unlink(missing_ok=True)
            return None

    def save(self, kind: str, key: dict, value: torch.Tensor) -> Path:
        path = self.path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"value": value.detach().cpu().contiguous()}, tmp, metadata={"key": json.dumps(key, sort_keys=True)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def get_or_compute(self, kind: str, key: dict, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        value = self.load(kind, key)
        if value is None:
            value = compute()
            self.save(kind, key, value)
        return value
