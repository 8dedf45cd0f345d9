"""Generation quality of an edited model: ROME's fluency and consistency tests (Meng et al. 2022,
§3.2 and appendix; reference code ``experiments/py/eval_utils_counterfact.py``).

An edit can make the model say the new fact and still wreck the way it writes. ROME samples text
from each of a CounterFact case's ``generation_prompts`` ("Danielle Darrieux's mother tongue") and
measures

- **fluency** (``ngram_entropy``): the weighted mean of the bi- and tri-gram entropies of each
  generated text, averaged over the case's texts. An edit that makes the model repeat itself
  ("French French French ...") lowers it;
- **consistency** ("reference score", ``TfidfReference.consistency``): the cosine similarity of
  the TF-IDF vectors of the generated texts and of reference texts about the *new* target. An edit
  that took should make the model write about the subject the way one writes about target_new.

Where our data and ROME's differ:

- *Reference texts.* ROME compared with Wikipedia snippets about other subjects that share
  target_new (``attribute_snippets.json``, not shipped here). We use the *unedited* model's own
  generations from the case's ``attribute_prompts`` instead (``reference_prompts``: other subjects
  whose true object is target_new, e.g. "The mother tongue of Jean Gabin is"), so the reference
  describes target_new as the model itself writes about it. They depend only on the unedited model
  and the case: generate them once per case (``reference_texts``) and reuse them for every editor.
- *TF-IDF statistics.* ROME fitted a default ``TfidfVectorizer`` on those snippets; we fit the same
  default vectorizer (lower-cased words of 2+ word characters, smoothed idf, L2 norm) on the
  paragraphs of the shipped WikiText-2 validation text (``REFERENCE_CORPUS``), once per process.
  Words outside that vocabulary do not count, as in ROME.
- *Tokens of the n-gram entropy.* ROME splits text with ``nltk.word_tokenize``; we do not depend
  on NLTK and use a regex with its main rules (``words``): punctuation marks are tokens,
  "well-known", "3.14" and "1,000" stay whole, "n't" and "'s" are split off. Quote and
  abbreviation handling differ slightly; entropies of different models are not comparable anyway.
- *Length.* ROME's ``max_out_len=100`` counts the prompt and the padding (GPT-2 tokens); we sample
  ``max_new_tokens`` (100) tokens after every prompt, so each continuation has the same length
  whatever its prompt and the batch it ran in. Texts are then ~10 tokens longer than ROME's, and
  entropies slightly higher; comparisons between editors on one model are unaffected.
- *Edge cases.* A text with fewer than n tokens has no n-grams: its n-gram entropy is 0 (ROME: nan).
  A side whose texts have no in-vocabulary word has consistency 0 (ROME: nan).

Like ROME we sample with top-k (5) at temperature 1, do not stop at the end-of-text token (every
text has the same length), and return prompt + continuation, decoded without special tokens, NFKD
normalised and with blank lines turned into spaces. Unlike ROME's ``generate_fast`` we pass
position ids computed from the attention mask, so a left-padded prompt generates what it would
alone (GPT-2 would otherwise count the padding as positions).
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import mean
from typing import Sequence

import numpy as np
import torch

from robustedit.data import Case
from robustedit.errors import UserError
from robustedit.models.forward import reroutes_logits
from robustedit.models.load import LanguageModel
from robustedit.models.text import encode, pad_id
from robustedit.stats.corpus import CORPORA

REFERENCE_CORPUS = "wikitext2-valid"


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = field(default=100, metadata={
        "help": "tokens sampled after each prompt (ROME: 100 tokens in all, prompt included; see module docstring)"})
    top_k: int = field(default=5, metadata={"help": "sample among the k most likely next tokens (ROME: 5; 1 = greedy)"})
    n_prompts: int = field(default=10, metadata={
        "help": "generation prompts per case, the first ones (CounterFact has 10: all of them)"})
    batch_size: int = field(default=16, metadata={"help": "prompts generated together (does not change the texts)"})
    seed: int = field(default=0, metadata={"help": "seed of the sampling, combined with each call's seed_key"})

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "top_k", "n_prompts", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"generation {name} must be an integer >= 1, not {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise UserError(f"generation seed must be an integer, not {self.seed!r}")


# --- sampling ------------------------------------------------------------------------------------

def row_generator(seed: int, seed_key: str, index: int, prompt: str) -> torch.Generator:
    """A CPU generator for one prompt of one call, the same in every process (no ``hash()`` salt).

    One generator per prompt, not per batch: which random numbers a prompt gets does not depend on
    the batch it runs in, nor on anything sampled before."""
    digest = hashlib.sha256(f"{seed}\x00{seed_key}\x00{index}\x00{prompt}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def sample_top_k(logits: torch.Tensor, top_k: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row ``(B,)`` from the softmax of ``logits`` ``(B, V)`` restricted to its top k,
    renormalised (ROME's ``generate_fast``). Draws happen on the CPU, so a seed gives the same
    tokens on every device (up to the logits' own rounding)."""
    probs = torch.softmax(logits.float(), dim=-1)
    top_p, top_i = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    top_p = (top_p / top_p.sum(-1, keepdim=True)).cpu()
    picks = [int(torch.multinomial(p, 1, generator=g)) for p, g in zip(top_p, generators)]
    return top_i.gather(1, torch.tensor(picks, device=top_i.device)[:, None])[:, 0]


def needs_full_forward(lm: LanguageModel) -> bool:
    """A hook on the causal-LM wrapper itself (SERAC's edit memory, ``editors/memory.py``) reads
    the whole input and rewrites the logits of its positions: it must see every token at every
    step, which a KV-cached step (one new token) does not give. Hooks inside the model (ROME's
    weights need none; REP's key adaptors) act token by token and work with the cache."""
    return reroutes_logits(lm.model)


@torch.inference_mode()
def _generate_batch(lm: LanguageModel, rows: list[list[int]], max_new_tokens: int, top_k: int,
                    generators: Sequence[torch.Generator]) -> list[list[int]]:
    """``rows`` (token ids) each continued by ``max_new_tokens`` sampled tokens.

    Rows are left-padded, with position ids counted from each row's first real token; a KV cache
    carries the past unless ``needs_full_forward``, in which case every step reruns the whole
    sequence (same tokens, ~``max_new_tokens``/2 times the compute)."""
    device, width = lm.device, max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id(lm.tokenizer), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    full = needs_full_forward(lm)
    step_ids, step_pos, cache = ids, positions, None
    for _ in range(max_new_tokens):
        if full:
            out = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        else:
            out = lm.model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                           past_key_values=cache, use_cache=True)
            cache = out.past_key_values
        new = sample_top_k(out.logits[:, -1, :], top_k, generators)[:, None]
        step_ids, step_pos = new, positions[:, -1:] + 1
        ids = torch.cat([ids, new], dim=1)
        mask = torch.cat([mask, torch.ones_like(new)], dim=1)
        positions = torch.cat([positions, step_pos], dim=1)
    return [ids[i, width - len(r):].tolist() for i, r in enumerate(rows)]


def clean_text(text: str) -> str:
    """ROME's post-processing of a generated text: NFKD, blank lines become spaces."""
    return unicodedata.normalize("NFKD", text).replace("\n\n", " ")


def generate_texts(lm: LanguageModel, prompts: Sequence[str], config: GenerationConfig,
                   seed_key: str) -> list[str]:
    """Prompt + sampled continuation for each prompt (module docstring), in the prompts' order.

    The texts are a function of the model's weights (and hooks), the prompts, ``config.seed`` and
    ``seed_key`` only: nothing sampled earlier in the process, the global RNG (left untouched) or
    the batch size changes them, so evaluation shards in other processes agree. Pass the same
    ``seed_key`` before and after an edit (e.g. the case id) to compare the two generations under
    the same random numbers."""
    tok = lm.tokenizer
    rows = [encode(tok, p) for p in prompts]
    if any(not r for r in rows):
        raise UserError("cannot generate from an empty prompt")
    gens = [row_generator(config.seed, seed_key, i, p) for i, p in enumerate(prompts)]
    out: list[list[int]] = []
    for start in range(0, len(rows), config.batch_size):
        chunk = slice(start, start + config.batch_size)
        out.extend(_generate_batch(lm, rows[chunk], config.max_new_tokens, config.top_k, gens[chunk]))
    return [clean_text(tok.decode(r, skip_special_tokens=True)) for r in out]


# --- fluency: n-gram entropy ---------------------------------------------------------------------

# NLTK's word_tokenize approximated (module docstring): numbers with separators, words with inner
# hyphens / apostrophes / periods, "n't" and "'s"-style clitics, "..." and "--", any other mark.
_TOKEN = re.compile(r"""
    \d+(?:[.,]\d+)+                       # 1,000  3.14
  | \w+?(?=n't\b)                         # "does" of "doesn't"
  | n't\b
  | '(?:s|re|ve|ll|d|m)\b                 # clitics, as Treebank splits them
  | \w+(?:[-.]\w+|'(?!(?:s|re|ve|ll|d|m)\b)\w+)*   # well-known, U.S, o'clock
  | \.\.\.|--
  | [^\w\s]
""", re.VERBOSE | re.IGNORECASE)


def words(text: str) -> list[str]:
    """``text`` split into word and punctuation tokens, NLTK ``word_tokenize``-like."""
    return _TOKEN.findall(text)


def entropy_bits(counts: Counter) -> float:
    """Shannon entropy (bits) of the distribution given by ``counts``; 0 for no observations."""
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's ``compute_n_gram_entropy``: the arithmetic mean over n of weight_n × H(n-grams).

    With the defaults that is H₂/3 + 2H₃/3 (the weights sum to 2 and are then averaged), in bits;
    H(n-grams) is the entropy of the frequency distribution of the text's n-grams of ``words``."""
    if len(ns) != len(weights) or not ns:
        raise ValueError("ngram_entropy needs one weight per n")
    tokens = words(text)
    return mean(w * entropy_bits(Counter(zip(*(tokens[i:] for i in range(n))))) for n, w in zip(ns, weights))


def mean_ngram_entropy(texts: Sequence[str]) -> float:
    """The per-case fluency: ``ngram_entropy`` averaged over the case's texts (ROME: ``arith``)."""
    if not texts:
        raise ValueError("no texts to measure")
    return mean(ngram_entropy(t) for t in texts)


# --- consistency: TF-IDF similarity to reference texts --------------------------------------------

def _is_heading(line: str) -> bool:
    return line.startswith("=") and line.endswith("=")  # WikiText's " = Section = " lines


def reference_documents(corpus: str = REFERENCE_CORPUS) -> list[str]:
    """The corpus's paragraphs (one per line, headings dropped): the documents the idf counts, as
    ROME's idf counted Wikipedia snippets of about a paragraph each."""
    lines = (line.strip() for text in CORPORA.get(corpus).texts() for line in text.splitlines())
    return [line for line in lines if line and not _is_heading(line)]


@lru_cache(maxsize=4)
def fitted_vectorizer(corpus: str = REFERENCE_CORPUS):
    """sklearn's default ``TfidfVectorizer`` (ROME's) fitted on ``reference_documents(corpus)``;
    fitted once per process (~1 s for WikiText-2 validation) and then shared."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer().fit(reference_documents(corpus))


@dataclass(frozen=True)
class TfidfReference:
    """TF-IDF vectors with the vocabulary and idf of a bundled corpus (``fitted_vectorizer``)."""

    corpus: str = REFERENCE_CORPUS

    def __post_init__(self) -> None:
        CORPORA.get(self.corpus)  # unknown corpus: did-you-mean error

    @property
    def vectorizer(self):
        return fitted_vectorizer(self.corpus)

    def vector(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised TF-IDF vector ``(V,)`` for all of ``texts`` together.

        As ROME (``tfidf_similarity(" ".join(gen_texts), " ".join(ref_texts), vec)``) the texts are
        joined, so their term counts are summed *before* the idf weighting and the normalisation:
        the mean of the texts' unnormalised TF-IDF vectors, normalised; longer texts weigh more.
        A zero vector when no word is in the vocabulary."""
        if not texts:
            raise ValueError("no texts to vectorise")
        return self.vectorizer.transform([" ".join(texts)]).toarray()[0]

    def consistency(self, generated_texts: Sequence[str], reference_texts: Sequence[str]) -> float:
        """Cosine similarity of ``vector(generated_texts)`` and ``vector(reference_texts)``, in [0, 1];
        0 when either side has no in-vocabulary word (ROME: nan)."""
        a, b = self.vector(generated_texts), self.vector(reference_texts)
        norm = float(np.linalg.norm(a) * np.linalg.norm(b))
        return float(np.dot(a, b) / norm) if norm > 0 else 0.0


def consistency_score(texts: Sequence[str], reference_texts: Sequence[str]) -> float:
    """ROME's reference score of a case: ``TfidfReference().consistency`` on the shipped WikiText."""
    return TfidfReference().consistency(texts, reference_texts)


# --- per case ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GenerationScores:
    """What the metrics registry reads (``generation_entropy``, ``reference_consistency``)."""

    entropy: float
    consistency: float | None  # None: the case has no reference prompts


def generation_seed_key(case: Case) -> str:
    """The same before and after the edit: the two generations share their random numbers."""
    return f"generation\x00{case.case_id}"


def reference_prompts(case: Case) -> tuple[str, ...]:
    """Prompts whose unedited continuations are the reference texts: CounterFact's
    ``attribute_prompts`` (other subjects whose true object is target_new; module docstring)."""
    return case.attribute_prompts


def reference_texts(lm: LanguageModel, case: Case, config: GenerationConfig) -> list[str] | None:
    """The reference texts of ``case``: call with the *unedited* model. None without prompts."""
    prompts = reference_prompts(case)
    if not prompts:
        return None
    return generate_texts(lm, prompts, config, seed_key=f"reference\x00{case.case_id}")


def generation_scores(lm: LanguageModel, case: Case, config: GenerationConfig) -> dict | None:
    """``{"texts": [...], "entropy": float}`` from the case's first ``n_prompts`` generation
    prompts; None when the case has none (only CounterFact has them)."""
    prompts = case.generation_prompts[: config.n_prompts]
    if not prompts:
        return None
    texts = generate_texts(lm, prompts, config, seed_key=generation_seed_key(case))
    return {"texts": texts, "entropy": mean_ngram_entropy(texts)}
