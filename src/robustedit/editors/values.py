"""Values: the vector v* at the subject that makes the model say the new target.

Follows ROME's ``compute_v`` (Meng et al. 2022, §3.1 eq. 4): a vector δ is added at the subject's
last token of every rewriting prompt (context prefix + prompt + target), and optimised with Adam
to minimise

    NLL(target | prompt)  +  kl_factor · KL(P(· | "{subject} is a") ‖ P₀)  +  weight_decay · ‖δ‖ / ‖v₀‖²

under the clamp ‖δ‖ ≤ clamp_norm_factor · ‖v₀‖, stopping early once the loss is below
``early_stop_loss``. v₀ is the site's original value on the first (context-free) prompt and the
result is v* = v₀ + δ. The weight-decay term keeps the reference code's form (‖δ‖ over ‖v₀‖²).
The KL distribution is read at the subject's last token of the KL prompt, as in the reference.

Where δ is added is the ``site``:

- ``"mlp_out"`` (ROME, the default): the output of the layer's MLP down-projection, the value
  that W maps the key k to.
- ``"layer_out"`` (MEMIT's ``compute_z``, Meng et al. 2023): the output of the whole decoder
  layer, i.e. the residual stream after it; v* is then the target hidden state z.

For architectures whose MLP output enters the residual stream unnormalised (Llama, GPT-2, GPT-NeoX,
GPT-J) both sites shift the same vector by δ; they differ in v₀ and so in the clamp and the decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from robustedit.editors.keys import at_subjects, subject_prompts
from robustedit.models.forward import logits_at
from robustedit.models.hooks import hidden_of, hooked, with_hidden
from robustedit.models.load import LanguageModel
from robustedit.models.prefix import PrefixCachedBatch
from robustedit.models.text import fill, pad_id, target_ids
from robustedit.progress import detail_bar
from robustedit.request import EditRequest

SITES = ("mlp_out", "layer_out")


def site_module(lm: LanguageModel, layer: int, site: str) -> torch.nn.Module:
    """The module whose output is the value at ``site`` of ``layer``."""
    if site == "mlp_out":
        return lm.down_proj(layer)
    if site == "layer_out":
        return lm.layer(layer)
    raise ValueError(f"unknown value site {site!r}; choose from {', '.join(SITES)}")


@dataclass(frozen=True)
class ValueConfig:
    num_steps: int = 25
    lr: float = 0.5
    weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    early_stop_loss: float = 5e-2
    kl_prompts: tuple[str, ...] = ("{} is a",)
    site: str = "mlp_out"  # where δ is added: see SITES

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise ValueError(f"unknown value site {self.site!r}; choose from {', '.join(SITES)}")


# An optimised value counts as converged when, at v*, the new target is more likely than
# everything else together (geometric mean over its tokens and the context templates). The early
# stop (loss < 0.05) is stricter and is missed by many edits that take, so it is not the test.
CONVERGED_PROB = 0.5


def convergence(final_loss: float, target_nll: float) -> dict:
    """What an edit's records say about its optimisation: the final loss, P(new target) per token
    (``exp(-NLL)``) and whether it reached ``CONVERGED_PROB``."""
    prob = math.exp(-target_nll) if math.isfinite(target_nll) else float("nan")
    return {"final_loss": final_loss, "target_prob": prob, "converged": prob >= CONVERGED_PROB}


@dataclass
class ValueResult:
    target: torch.Tensor  # v* (d_out,); z for site="layer_out"
    target_init: torch.Tensor  # v₀ (d_out,)
    delta: torch.Tensor  # δ (d_out,)
    losses: list[float] = field(default_factory=list)
    nlls: list[float] = field(default_factory=list)  # the target's mean NLL per token at each step

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def target_prob(self) -> float:
        """P(new target) per token at v* (geometric mean over tokens and templates)."""
        return math.exp(-self.nlls[-1]) if self.nlls else float("nan")

    def convergence(self) -> dict:
        """:func:`convergence` at v*."""
        return convergence(self.losses[-1] if self.losses else float("nan"), self.nlls[-1] if self.nlls else float("nan"))


@dataclass
class _RewriteBatch:
    """Every request's rewriting prompts, then every request's KL prompts, split at the subject's
    last token (see models/prefix.py).

    Column 0 of the suffix is the subject's last token in every row, where δ of the row's request
    (``owner``) is added.
    """

    forward: PrefixCachedBatch
    owner: torch.Tensor  # (B,) request index of each row
    first_row: torch.Tensor  # (n,) the row of each request's first template (v₀ is read there)
    target_rows: torch.Tensor  # (M,) row of each target token
    target_cols: torch.Tensor  # (M,) suffix column whose logits predict it
    target_tokens: torch.Tensor  # (M,)
    target_weights: torch.Tensor  # (M,) 1/len(target)/n_templates, so a request's sum is its mean NLL
    kl_rows: torch.Tensor  # (K,) rows of the KL prompts

    def subset(self, keep: torch.Tensor) -> "_RewriteBatch":
        """The rows of the requests where ``keep`` ``(n,)`` is true; request indices stay the same."""
        rows = keep[self.owner].nonzero()[:, 0]
        new_index = torch.full_like(self.owner, -1)
        new_index[rows] = torch.arange(len(rows), device=rows.device)
        t = keep[self.owner[self.target_rows]]
        k = keep[self.owner[self.kl_rows]]
        return _RewriteBatch(self.forward.select(rows), self.owner[rows], new_index[self.first_row],
                             new_index[self.target_rows[t]], self.target_cols[t], self.target_tokens[t],
                             self.target_weights[t], new_index[self.kl_rows[k]])


def suffix_length(tokenizer, request: EditRequest) -> int:
    """Tokens from the subject's last token to the end of the teacher-forced target, the columns
    every optimisation step runs (the same for every context prefix)."""
    rows, last = subject_prompts(tokenizer, [request.prompt], request.subject)
    text, _, _ = fill(request.prompt, request.subject)
    return len(rows[0]) - last[0] + len(target_ids(tokenizer, text, request.target_new)) - 1


def rewrite_batch(lm: LanguageModel, requests: list[EditRequest], templates_of: list[list[str]],
                  kl_prompts: tuple[str, ...]) -> _RewriteBatch:
    tok = lm.tokenizer
    rows, split, owner, first_row = [], [], [], []
    t_rows, t_cols, t_toks, t_w = [], [], [], []
    for r, (request, templates) in enumerate(zip(requests, templates_of)):
        ids, lookup = subject_prompts(tok, templates, request.subject)
        first_row.append(len(rows))
        for template, row, last in zip(templates, ids, lookup):
            text, _, _ = fill(template, request.subject)
            tids = target_ids(tok, text, request.target_new)
            for j, t in enumerate(tids):
                t_rows.append(len(rows))
                t_cols.append(len(row) - 1 + j - last)
                t_toks.append(t)
                t_w.append(1.0 / len(tids) / len(templates))
            rows.append(row + tids[:-1])  # teacher forcing: the last target token is never input
            split.append(last)
            owner.append(r)
    kl_start = len(rows)
    for r, request in enumerate(requests):
        ids, lookup = subject_prompts(tok, list(kl_prompts), request.subject)
        rows += ids
        split += lookup
        owner += [r] * len(ids)
    forward = PrefixCachedBatch.build(lm, rows, split, pad_id(tok))
    dev = lm.device
    return _RewriteBatch(
        forward=forward,
        owner=torch.tensor(owner, device=dev),
        first_row=torch.tensor(first_row, device=dev),
        target_rows=torch.tensor(t_rows, device=dev),
        target_cols=torch.tensor(t_cols, device=dev),
        target_tokens=torch.tensor(t_toks, device=dev),
        target_weights=torch.tensor(t_w, device=dev),
        kl_rows=torch.arange(kl_start, len(rows), device=dev),
    )


def subject_values(lm: LanguageModel, layer: int, site: str, templates: list[str], subject: str) -> torch.Tensor:
    """The current values ``(N, d_out)`` at ``site`` of ``layer`` at ``subject``'s last token in each
    template; the forward pass stops there."""
    return at_subjects(lm, site_module(lm, layer, site), [(t, subject) for t in templates], output=True).float()


def optimize_value(lm: LanguageModel, layer: int, request: EditRequest, templates: list[str], cfg: ValueConfig) -> ValueResult:
    """Find v* for ``request`` at ``cfg.site`` of ``layer``; ``templates[0]`` should be the bare prompt."""
    return optimize_values(lm, layer, [request], [templates], cfg)[0]


def optimize_values(lm: LanguageModel, layer: int, requests: list[EditRequest], templates_of: list[list[str]],
                    cfg: ValueConfig, batch_size: int = 1) -> list[ValueResult]:
    """v* for each request, optimised ``batch_size`` requests at a time in one batched forward pass.

    Each request has its own δ, its own loss and its own early stop; rows of different requests
    never interact (each is its own sequence) and Adam is elementwise, so a batch gives every
    request exactly the trajectory it would have alone, up to floating-point summation order.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    # Requests with equally long suffixes share a batch: less padding in every step.
    order = sorted(range(len(requests)), key=lambda i: suffix_length(lm.tokenizer, requests[i]))
    results: dict[int, ValueResult] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        found = _optimize_batch(lm, layer, [requests[i] for i in chunk], [templates_of[i] for i in chunk], cfg)
        results.update(zip(chunk, found))
    return [results[i] for i in range(len(requests))]


def _optimize_batch(lm: LanguageModel, layer: int, requests: list[EditRequest], templates_of: list[list[str]],
                    cfg: ValueConfig) -> list[ValueResult]:
    """One Adam run over the δ ``(n, d)`` of ``requests``; a request that reaches its early stop
    (or the last step) is frozen and its rows leave the batch."""
    n = len(requests)
    rb = rewrite_batch(lm, requests, templates_of, cfg.kl_prompts)
    module = site_module(lm, layer, cfg.site)
    # Both sites write into the residual stream, so δ has its width whatever the site.
    delta = torch.zeros(n, lm.d_model, device=lm.device, dtype=torch.float32, requires_grad=True)
    captured: dict[str, torch.Tensor] = {}

    def add_delta(_mod, _args, out):  # hidden: (B, S, d_out); column 0 is the subject's last token
        h = hidden_of(out)
        if "v0" not in captured:
            captured["v0"] = h[rb.first_row, 0].detach().float().clone()  # (n, d)
        shifted = h[:, :1] + delta[rb.owner][:, None].to(h.dtype)
        return with_hidden(out, torch.cat([shifted, h[:, 1:]], dim=1))

    opt = torch.optim.Adam([delta], lr=cfg.lr)
    kl_init = None  # (K, vocab) log-probabilities of the KL rows before any step, aligned with rb.kl_rows
    losses: list[list[float]] = [[] for _ in range(n)]
    nlls: list[list[float]] = [[] for _ in range(n)]
    active = torch.ones(n, dtype=torch.bool, device=lm.device)
    bar = detail_bar(cfg.num_steps, f"optimising v* at layer {layer}")
    with hooked(module, post=add_delta), bar:
        for step in range(cfg.num_steps):
            opt.zero_grad()
            hidden = rb.forward.hidden(from_layer=layer)  # (B, S, d); layers below δ's are fixed
            logp = torch.log_softmax(logits_at(lm, hidden, rb.target_rows, rb.target_cols).float(), dim=-1)
            token_nll = -logp.gather(1, rb.target_tokens[:, None])[:, 0] * rb.target_weights
            nll = torch.zeros(n, device=lm.device).index_add(0, rb.owner[rb.target_rows], token_nll)
            kl_logp = torch.log_softmax(logits_at(lm, hidden, rb.kl_rows, torch.zeros_like(rb.kl_rows)).float(), dim=-1)
            if kl_init is None:
                kl_init = kl_logp.detach().clone()
            kl_owner = rb.owner[rb.kl_rows]
            row_kl = F.kl_div(kl_init, kl_logp, log_target=True, reduction="none").sum(-1)
            kl_sum = torch.zeros(n, device=lm.device).index_add(0, kl_owner, row_kl)
            kl = cfg.kl_factor * kl_sum / torch.bincount(kl_owner, minlength=n).clamp(min=1)
            v0 = captured["v0"]
            decay = cfg.weight_decay * (delta.norm(dim=1) / v0.norm(dim=1) ** 2)
            loss = nll + kl + decay  # (n,); only active requests' entries are meaningful
            was_active = active.clone()
            bar.update()
            bar.set_postfix(loss=f"{float(loss.detach()[active].mean()):.3f}")
            for r in active.nonzero()[:, 0].tolist():
                losses[r].append(loss[r].item())
                nlls[r].append(nll[r].item())
                if losses[r][-1] < cfg.early_stop_loss or step == cfg.num_steps - 1:
                    active[r] = False  # this δ is final: the reference stops before stepping
            if not active.any():
                break
            (loss * active).sum().backward()
            frozen = delta.detach()[~active].clone()
            opt.step()
            with torch.no_grad():
                delta[~active] = frozen  # Adam's momentum would still move a finished δ
                max_norm = cfg.clamp_norm_factor * v0.norm(dim=1, keepdim=True)
                norms = delta.norm(dim=1, keepdim=True)
                delta.mul_(torch.where(norms > max_norm, max_norm / norms, torch.ones_like(norms)))
            if not torch.equal(active, was_active):  # finished requests' rows leave the batch
                kl_init = kl_init[active[kl_owner]]
                rb = rb.subset(active)
    d = delta.detach().clone()
    v0 = captured["v0"]
    return [ValueResult(target=v0[r] + d[r], target_init=v0[r], delta=d[r], losses=losses[r], nlls=nlls[r])
            for r in range(n)]
