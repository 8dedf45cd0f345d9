"""REP as its authors' code trains it (``rep.variant=reference``, the default): repository
ElliottYan/RobustKeyEdit, ``EasyEditOurs/easyeditor/models/aggregator.py`` (``Aggregator.edit``,
``Adaptor``), called by ``rome/rome_main.py`` and ``memit/memit_main.py`` after the weight update,
with the settings of their script ``scripts/edit_llama.sh``.

**Training keys** (per request, :func:`reference_prompts`), each the input of the edited
down-projection at the subject's last token:

- positives: the original subject inside each generated prefix of the base editor (20 for ROME's
  ``[[5, 10], [10, 10]]``); each in-domain rephrased or shuffled subject (the first half of the
  ten, ``agg_train_on_held``) inside all 21 templates (the bare prompt and the prefixes); each
  in-domain long-context prompt;
- the anchor: the bare edit prompt's subject key.

**Loss** per step, summed over the adapted layers (the reference's weights: agg 1, kl 0, spread 0,
target consistency 5·10⁴):

    L = − mean_{s ∈ batch} normalize(k̂_s)ᵀ g  +  w · MSE(k̂_anchor, k_anchor)

with k̂ = k + gate(k)·proj(dropout(k)) (soft gate), g = C⁻¹k*/‖C⁻¹k*‖ for ROME (the reference
passes ROME's left vector u; ``agg_remove_c`` then keeps C out of the loss) and g = k_l, the raw
key MEMIT inserted at layer l (the reference passes ``layer_ks``), the signed similarity (the
authors removed the paper's |·|, "v5: remove abs"), w = ``anchor_weight``. The anchor keeps the
adapted bare-prompt key where the edit already works: its gate is pushed shut or its branch to 0.
Mini-batches of ``batch_size`` (15) positives from a shuffled list, reshuffled when used up, the
anchor added to each; Adam, lr 5e-4, 10 steps. The adaptor is ``KeyAdaptor(arch="lora")``: no
biases, the projection's second factor zero, so the branch starts at exactly 0.

**MEMIT**: one adaptor per edited layer, all trained together. Each step runs the batch through
the model (carrying MEMIT's update) with every adaptor in its training form on its layer, so a
layer sees the keys the adaptors below it produce; each layer's loss takes its own adaptor on its
detached input (the reference's ``TraceInputDict`` with ``edit_input_dict``). ROME has one layer,
whose keys do not depend on its adaptor: they are read once.

**Two bugs of the reference are not copied.** Long contexts are meant to be trained on
(``agg_add_long_context``) but their templates are built with ``str.format`` on texts that hold no
``{}`` and then filtered out for lacking one, so none is used; we use them. The reference ends
training with ``adaptor.training = False``, which does not reach the Dropout submodule, so dropout
stays active at test time; ours is off (``adaptor.eval()``).

**Small differences kept**: our in-domain half is a seeded random half of each kind's probes
(theirs: the first half of the data's lists); our long contexts are 512-token WikiText spans
(theirs: 300 words of Wikipedia); our shuffles join decoded token pieces (theirs join raw
sentencepiece tokens, "▁" marks included); the gate opens at ≥ τ (theirs: > τ); several requests
in one call are trained together, each toward its own goal with its own anchor (theirs: one).
"""

from __future__ import annotations

import random
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustedit.editors.adaptors import KeyAdaptor
from robustedit.editors.keys import subject_prompts
from robustedit.editors.rep_fit import AdaptorFit, gate_width, unit_similarity
from robustedit.errors import UserError
from robustedit.models.hooks import StopForward, hooked
from robustedit.models.text import length_batches, pad, pad_id
from robustedit.request import EditRequest, Probe


@dataclass(frozen=True)
class KeyPrompt:
    """A prompt whose subject key trains the adaptor; ``owner`` is the request it belongs to."""

    template: str
    subject: str
    owner: int
    kind: str  # "prefix", "rephrase_subject", "shuffle_subject", "long_context" or "anchor"


def reference_prompts(requests: list[EditRequest], probes_of: list[tuple[Probe, ...]], contexts: list[str],
                      prefixes: bool = True, long_contexts: bool = True) -> tuple[list[KeyPrompt], list[KeyPrompt]]:
    """(positives, anchors) for the requests, each with its in-domain probes (module docstring).
    ``contexts`` are the base editor's templates, ``"{}"`` first; ``long_contexts=False`` leaves
    out the long-context prompts, as the authors' code in effect does."""
    positives, anchors = [], []
    for i, (request, probes) in enumerate(zip(requests, probes_of)):
        anchors.append(KeyPrompt(request.prompt, request.subject, i, "anchor"))
        if prefixes:
            positives += [KeyPrompt(c.format(request.prompt), request.subject, i, "prefix") for c in contexts if c != "{}"]
        for p in probes:
            if p.template == request.prompt:  # a rephrased or shuffled subject: in every template
                positives += [KeyPrompt(c.format(p.template), p.subject, i, p.kind or "subject_variant") for c in contexts]
            elif long_contexts:  # a long context: the prompt as it is
                positives.append(KeyPrompt(p.template, p.subject, i, p.kind or "long_context"))
    positives = list(dict.fromkeys(positives))  # the reference de-duplicates its templates
    if not positives:
        raise UserError(f"REP has no prompts to train on for {requests[0].text!r}: give the subject rephrasings")
    return positives, anchors


def _encode(lm, prompts: list[KeyPrompt]) -> tuple[list[list[int]], list[int]]:
    rows, last = [], []
    for p in prompts:
        r, i = subject_prompts(lm.tokenizer, [p.template], p.subject)
        rows += r
        last += i
    return rows, last


@dataclass
class Keys:
    """What :func:`read_keys` returns, per module (bottom-up): the keys at each row's subject
    ``(N, d_in)`` and, per row, the keys at every other real token ``(T_i − 1, d_in)``."""

    subject: list[torch.Tensor]
    others: list[list[torch.Tensor]]

    def select(self, rows: list[int]) -> "Keys":
        return Keys([k[rows] for k in self.subject], [[o[i] for i in rows] for o in self.others])


@torch.no_grad()
def read_keys(lm, modules: list[torch.nn.Module], adaptors: list[KeyAdaptor] | None, rows: list[list[int]],
              last: list[int], batch_size: int = 32, max_tokens: int = 4096) -> Keys:
    """The input of each module (bottom-up) at the subject's last token of each row and at its
    other tokens, float32; with ``adaptors`` (one per module, in whatever mode they are), each
    module's adaptor rewrites its keys for the modules above. The forward pass stops at the top
    module. Rows are batched by length under a padded-token budget (a 512-token long context does
    not pad thirty short prompts to its length)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    subject: list[list[torch.Tensor]] = [[] for _ in modules]
    others: list[list[torch.Tensor | None]] = [[None] * len(rows) for _ in modules]
    for picked in length_batches(order, batch_size, max_tokens, size=lambda i: len(rows[i])):
        batch = pad([rows[i] for i in picked], pad_id(lm.tokenizer), lm.device)
        r = torch.arange(len(picked), device=lm.device)
        c = torch.tensor([last[i] for i in picked], device=lm.device)
        rest = batch.attention_mask.bool().clone()
        rest[r, c] = False

        def pre_for(i: int):
            def pre(_module, args):
                k = args[0]
                subject[i].append(k[r, c].float())
                for j, row in enumerate(picked):
                    others[i][row] = k[j][rest[j]].float()
                if i == len(modules) - 1:
                    raise StopForward
                return (adaptors[i](k), *args[1:]) if adaptors is not None else None
            return pre

        with ExitStack() as hooks:
            for i, module in enumerate(modules):
                hooks.enter_context(hooked(module, pre=pre_for(i)))
            try:
                lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
            except StopForward:
                pass
    inverse = torch.argsort(torch.tensor(order, device=lm.device))
    return Keys([torch.cat(k)[inverse] for k in subject], others)


class Batches:
    """Index batches of ``size`` drawn from a shuffled ``range(n)``, reshuffled when used up."""

    def __init__(self, n: int, size: int, rng: random.Random) -> None:
        self.n, self.size, self.rng = n, min(size, n), rng
        self.order: list[int] = []

    def next(self) -> list[int]:
        if len(self.order) < self.size:
            self.order = list(range(self.n))
            self.rng.shuffle(self.order)
        batch, self.order = self.order[: self.size], self.order[self.size :]
        return batch


def fit_reference(lm, modules: list[torch.nn.Module], goals: list[torch.Tensor], positives: list[KeyPrompt],
                  anchors: list[KeyPrompt], cfg) -> list[AdaptorFit]:
    """Train one adaptor per module (bottom-up) together, each pulling its positives toward the
    goal of their request, ``goals[l]`` ``(n_requests, d_in)`` (module docstring)."""
    pos_rows, pos_last = _encode(lm, positives)
    anc_rows, anc_last = _encode(lm, anchors)
    owners = torch.tensor([p.owner for p in positives], device=lm.device)
    anchor_owners = torch.tensor([a.owner for a in anchors], device=lm.device)
    goals = [g.float().to(lm.device) for g in goals]
    fixed = len(modules) == 1  # one layer: its keys do not depend on its own adaptor
    history: list[dict[str, float]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        adaptors = [KeyAdaptor(g.shape[1], cfg.rank, gate_width(cfg, g.shape[1]), cfg.dropout, cfg.tau,
                               arch="lora").to(lm.device).train() for g in goals]
        opt = torch.optim.Adam([p for a in adaptors for p in a.parameters()], lr=cfg.lr)
        batches = Batches(len(positives), cfg.batch_size, random.Random(cfg.seed))
        if fixed:
            pos_keys = read_keys(lm, modules, None, pos_rows, pos_last)
            anc_keys = read_keys(lm, modules, None, anc_rows, anc_last)
        for _ in range(cfg.steps):
            idx = batches.next()
            if fixed:
                pos, anc = pos_keys.select(idx), anc_keys
            else:
                keys = read_keys(lm, modules, adaptors, [pos_rows[i] for i in idx] + anc_rows,
                                 [pos_last[i] for i in idx] + anc_last)
                pos, anc = keys.select(list(range(len(idx)))), keys.select(list(range(len(idx), len(keys.subject[0]))))
            with torch.enable_grad():
                terms = _step_losses(adaptors, goals, owners[idx], pos, anc, cfg.context_weight > 0)
                loss = terms["alignment"] + cfg.anchor_weight * terms["anchor"] + cfg.context_weight * terms["context"]
                opt.zero_grad()
                loss.backward()
                opt.step()
            history.append({"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}})
    for adaptor in adaptors:
        adaptor.eval()
    if not fixed:  # the keys each layer sees at test time: the adaptors below with their binary gates
        pos_keys = read_keys(lm, modules, adaptors, pos_rows, pos_last)
        anc_keys = read_keys(lm, modules, adaptors, anc_rows, anc_last)
    kinds = [p.kind for p in positives]
    return [AdaptorFit(a, _diagnostics(a, kp, ka, torch.cat(ko), g[owners], g[anchor_owners], cfg, history, kinds))
            for a, g, kp, ka, ko in zip(adaptors, goals, pos_keys.subject, anc_keys.subject, pos_keys.others)]


def _step_losses(adaptors: list[KeyAdaptor], goals: list[torch.Tensor], owners: torch.Tensor, pos: Keys, anc: Keys,
                 context: bool) -> dict[str, torch.Tensor]:
    """The reference's terms, summed over layers: the (negative) alignment of the batch's subject
    keys with their goals, MSE(k̂, k) at the anchors, and (``context``) at every other token of
    the batch's prompts (the authors' ``kl_loss`` of type ``mse``)."""
    alignment = anchor = other = torch.zeros(())
    for adaptor, goal, kp, ka, ko in zip(adaptors, goals, pos.subject, anc.subject, pos.others):
        alignment = alignment - (F.normalize(adaptor(kp), dim=-1) * goal[owners]).sum(-1).mean()
        anchor = anchor + F.mse_loss(adaptor(ka), ka)
        if context:
            ko = torch.cat(ko)
            other = other + F.mse_loss(adaptor(ko), ko)
    return {"alignment": alignment, "anchor": anchor, "context": other}


@torch.no_grad()
def _diagnostics(adaptor: KeyAdaptor, pos: torch.Tensor, anc: torch.Tensor, others: torch.Tensor, goal: torch.Tensor,
                 anchor_goal: torch.Tensor, cfg, history: list[dict], kinds: list[str]) -> dict:
    gate, anchor_gate = adaptor.gate_prob(pos), adaptor.gate_prob(anc)
    open_ = (gate[:, 0] >= cfg.tau).float()
    by_kind = {k: float(open_[[i for i, kind in enumerate(kinds) if kind == k]].mean()) for k in dict.fromkeys(kinds)}
    return {
        "variant": "reference",
        "n_keys": len(pos),
        "kinds": dict(Counter(kinds)),
        "losses": [h["loss"] for h in history],
        "alignment_loss": history[-1]["alignment"] if history else None,
        "anchor_loss": history[-1]["anchor"] if history else None,
        "context_loss": history[-1]["context"] if history and cfg.context_weight > 0 else None,
        "gate_mean": float(gate.mean()),
        "gate_open_share": float(open_.mean()),
        "gate_open_by_kind": by_kind,  # e.g. open on shuffles, shut on the prefixes of the original subject
        "anchor_gate": float(anchor_gate.mean()),
        "anchor_gate_open_share": float((anchor_gate >= cfg.tau).float().mean()),
        # every other token of the training prompts (the relation's words, the long contexts):
        # where an open gate changes keys that no edit asked for
        "context_gate_open_share": float((adaptor.gate_prob(others) >= cfg.tau).float().mean()) if len(others) else None,
        "similarity_before": unit_similarity(pos, goal),
        "similarity_soft_gate": unit_similarity(pos + adaptor.branch(pos, hard=False), goal),  # as trained
        "similarity_after": unit_similarity(adaptor(pos), goal),  # the binary gate, as at test time
        "anchor_similarity_before": unit_similarity(anc, anchor_goal),
        "anchor_similarity_after": unit_similarity(adaptor(anc), anchor_goal),
    }
