"""Text corpora shipped with robustedit, as fixed-length token windows.

The default corpus is 103 English Wikipedia articles (CC BY-SA 3.0, Wikipedia contributors; see
``resources/corpus/README.md``). Text is concatenated and cut into windows of ``seq_len`` tokens,
so no batch carries padding and every token computed is a token counted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from robustedit.paths import resource
from robustedit.registry import Registry


@dataclass(frozen=True)
class Corpus:
    name: str
    file: str  # under resources/corpus
    kind: str  # "jsonl" (field "text") or "text"

    @property
    def path(self) -> Path:
        return resource("corpus", self.file)

    def texts(self) -> list[str]:
        raw = self.path.read_text(encoding="utf-8")
        if self.kind == "jsonl":
            return [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
        return [block for block in raw.split("\n \n") if block.strip()]


CORPORA: Registry[Corpus] = Registry("corpus")
CORPORA.register("enwiki-sample", Corpus("enwiki-sample", "enwiki_sample_plaintext.jsonl", "jsonl"))
CORPORA.register("wikitext2-valid", Corpus("wikitext2-valid", "wiki.valid.raw", "text"))


@lru_cache(maxsize=8)
def corpus_hash(name: str) -> str:
    """SHA-256 of the corpus file: part of every statistics cache key."""
    return hashlib.sha256(CORPORA.get(name).path.read_bytes()).hexdigest()


def token_windows(tokenizer, corpus: str, n_tokens: int, seq_len: int) -> torch.Tensor:
    """The first ``n_tokens`` tokens of the corpus as ``(n_windows, seq_len)`` int64.

    Articles are joined by the tokenizer's end-of-sequence token (or a blank line) so windows may
    span article boundaries, as in pre-training. Fewer windows come back if the corpus is short.
    """
    sep = tokenizer.eos_token or "\n\n"
    ids: list[int] = []
    for text in CORPORA.get(corpus).texts():
        ids.extend(tokenizer(text + sep, add_special_tokens=False)["input_ids"])
        if len(ids) >= n_tokens:
            break
    n_windows = min(n_tokens, len(ids)) // seq_len
    return torch.tensor(ids[: n_windows * seq_len], dtype=torch.long).view(n_windows, seq_len)
