"""Robustness probes of an edit (REP paper, "Keys to robust edits", §5.1, §6.1 and appendix B.1).

An edit of "The mother tongue of Danielle Darrieux is" should also hold when the subject is
written differently. Three kinds of probe, each the edit prompt with one perturbation:

- ``rephrase_subject``: the subject replaced by one of the case's rephrasings (the data's
  ``subject_rephrase``; files without them get no probes of this kind);
- ``shuffle_subject``: the subject's *tokens* in a random other order ("ieuxDarr Danielle"), up to
  10 orders: §5.1 ("we sample 10 random orderings of tokens in the subject") and the authors'
  ``evaluate.py`` (permutations of ``tok.tokenize(subject)``). Appendix B.1 says "word ordering";
  ``shuffle_unit="word"`` reorders whole words instead (tokens for a one-word subject), which
  leaves a two-word subject a single other order, so its out-of-domain half is nearly always empty.
- ``long_context``: a random span of ``context_tokens`` (512) tokens of unrelated WikiText text
  before the prompt. The spans come from the shipped WikiText-2 validation text (the articles of
  WikiText-103's validation split), minus its last ``HELDOUT_TAIL_TOKENS`` tokens, which the
  perplexity probe of ``eval.ability`` reads.

Each kind has up to ``n_per_kind`` (10) probes per case, split (seeded, per case and kind) into an
in-domain half, which an adaptor such as REP may train on (without the target: only their keys),
and an out-of-domain half it never sees. Everything here is a pure function of the case, the
tokenizer and the config, so the evaluation and an editor that trains on the in-domain probes
always agree on them.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from dataclasses import dataclass, field
from functools import lru_cache

from robustedit.data import Case
from robustedit.errors import UserError
from robustedit.request import Probe
from robustedit.stats.corpus import CORPORA

KINDS = ("rephrase_subject", "shuffle_subject", "long_context")
SPLITS = ("id", "ood")
CONTEXT_CORPUS = "wikitext2-valid"
HELDOUT_TAIL_TOKENS = 4096  # eval.ability.heldout_windows reads these; contexts never do


@dataclass(frozen=True)
class RobustnessConfig:
    n_per_kind: int = field(default=10, metadata={"help": "probes of each kind per case (paper: 10)"})
    in_domain_fraction: float = field(default=0.5, metadata={"help": "share of each kind's probes that is in-domain"})
    shuffle_unit: str = field(default="token", metadata={
        "help": "'token': shuffle the subject's tokens (the paper's §5.1); 'word': its words (tokens for one-word subjects)"})
    context_tokens: int = field(default=512, metadata={"help": "tokens of unrelated text before long-context probes"})
    context_separator: str = field(default=" ", metadata={"help": "between the unrelated text and the prompt"})
    seed: int = field(default=0, metadata={"help": "seed of the shuffles, the context spans and the split"})

    def __post_init__(self) -> None:
        if self.n_per_kind < 2:
            raise UserError("robustness n_per_kind must be >= 2 (one in-domain and one out-of-domain probe)")
        if not 0 < self.in_domain_fraction < 1:
            raise UserError("robustness in_domain_fraction must be in (0, 1)")
        if self.shuffle_unit not in ("word", "token"):
            raise UserError(f"robustness shuffle_unit must be 'word' or 'token', not {self.shuffle_unit!r}")
        if self.context_tokens < 1:
            raise UserError("robustness context_tokens must be >= 1")

    def check_fits(self, max_positions: int | None, model: str, prompt_room: int = 64) -> None:
        """Refuse long-context probes that would not fit the model (``prompt_room`` tokens are
        left for the prompt and target): past its position table it fails or reads garbage."""
        if max_positions is not None and self.context_tokens + prompt_room > max_positions:
            raise UserError(f"long-context probes of {self.context_tokens} tokens do not fit {model}, which takes "
                            f"{max_positions} positions; set robustness.context_tokens to at most "
                            f"{max(1, max_positions - prompt_room)}")


def case_rng(seed: int, case_id: str, purpose: str) -> random.Random:
    """A generator for one case and purpose, the same in every process (no ``hash()`` salt)."""
    digest = hashlib.sha256(f"{seed}\x00{case_id}\x00{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def distinct_orders(items: list[str], n: int, rng: random.Random) -> list[tuple[str, ...]]:
    """Up to ``n`` distinct orders of ``items``, none equal to the original sequence."""
    original = tuple(items)
    if len(set(items)) < 2:
        return []
    if math.factorial(len(items)) <= 4 * n + 1:  # few orders: all of them, then a random choice
        orders = [p for p in dict.fromkeys(itertools.permutations(items)) if p != original]
        rng.shuffle(orders)
        return orders[:n]
    orders: list[tuple[str, ...]] = []
    seen = {original}
    while len(orders) < n:  # many orders: rejection sampling ends quickly
        order = list(items)
        rng.shuffle(order)
        if tuple(order) not in seen:
            seen.add(tuple(order))
            orders.append(tuple(order))
    return orders


def subject_shuffles(subject: str, tokenizer, n: int, rng: random.Random, unit: str = "token") -> list[str]:
    """Up to ``n`` reorderings of ``subject`` (module docstring): its tokens, or with ``unit="word"``
    its words (tokens if it has one word)."""
    words = subject.split()
    if unit == "word" and len(words) > 1:
        return [" ".join(order) for order in distinct_orders(words, n, rng)]
    ids = tokenizer(" " + subject, add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    # Joining decoded pieces keeps each piece's own leading space, so "▁Par" "is" can become "is Par".
    out = []
    for order in distinct_orders(pieces, n, rng):
        text = "".join(order).strip()
        if text and text != subject and text not in out:
            out.append(text)
    return out


@lru_cache(maxsize=4)
def _context_token_ids(tokenizer) -> tuple[int, ...]:
    """The context corpus as one token sequence, without the tail the perplexity probe reads."""
    text = "\n".join(CORPORA.get(CONTEXT_CORPUS).texts())
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tuple(ids[: max(0, len(ids) - HELDOUT_TAIL_TOKENS)])


def context_spans(tokenizer, n: int, n_tokens: int, rng: random.Random) -> list[str]:
    """``n`` random spans of ``n_tokens`` tokens of the context corpus, as text."""
    ids = _context_token_ids(tokenizer)
    if len(ids) <= n_tokens:
        raise UserError(f"the context corpus has {len(ids)} tokens, fewer than context_tokens={n_tokens}")
    starts = [rng.randrange(len(ids) - n_tokens) for _ in range(n)]
    return [tokenizer.decode(list(ids[s : s + n_tokens])).strip() for s in starts]


def _no_braces(text: str) -> str:
    """Braces in the unrelated text would read as the subject's slot of the template."""
    return text.replace("{", "(").replace("}", ")")


def probes_of_case(case: Case, tokenizer, cfg: RobustnessConfig) -> dict[str, list[Probe]]:
    """Every probe of ``case`` by kind (before the split); a kind without probes is absent."""
    r = case.request
    rephrases = [s for s in dict.fromkeys(case.subject_rephrases) if s.strip() and s != r.subject]
    shuffles = subject_shuffles(r.subject, tokenizer, cfg.n_per_kind, case_rng(cfg.seed, case.case_id, "shuffle"),
                                cfg.shuffle_unit)
    contexts = context_spans(tokenizer, cfg.n_per_kind, cfg.context_tokens, case_rng(cfg.seed, case.case_id, "context"))
    probes = {
        "rephrase_subject": [Probe(r.prompt, s, "rephrase_subject") for s in rephrases[: cfg.n_per_kind]],
        "shuffle_subject": [Probe(r.prompt, s, "shuffle_subject") for s in shuffles],
        "long_context": [Probe(_no_braces(c) + cfg.context_separator + r.prompt, r.subject, "long_context")
                         for c in contexts],
    }
    return {kind: p for kind, p in probes.items() if p}


def split_probes(case_id: str, probes: list[Probe], cfg: RobustnessConfig, kind: str) -> dict[str, list[Probe]]:
    """``{"id": …, "ood": …}``: a seeded random half of ``probes`` (rounded up) is in-domain.
    A kind with a single probe has only an in-domain one."""
    order = list(probes)
    case_rng(cfg.seed, case_id, f"split/{kind}").shuffle(order)
    n_id = math.ceil(len(order) * cfg.in_domain_fraction)
    return {"id": order[:n_id], "ood": order[n_id:]}


def robustness_probes(case: Case, tokenizer, cfg: RobustnessConfig) -> dict[str, dict[str, list[Probe]]]:
    """``{kind: {"id": [Probe…], "ood": [Probe…]}}`` for ``case`` (module docstring)."""
    return {kind: split_probes(case.case_id, p, cfg, kind) for kind, p in probes_of_case(case, tokenizer, cfg).items()}


def in_domain(probes: dict[str, dict[str, list[Probe]]]) -> tuple[Probe, ...]:
    """The in-domain probes of every kind, in ``KINDS`` order: what an adaptor may train on."""
    return tuple(p for kind in KINDS if kind in probes for p in probes[kind]["id"])
