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

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from robustedit.editors.keys import subject_prompts
from robustedit.models.forward import logits_at
from robustedit.models.hooks import hidden_of, hooked, run_until, with_hidden
from robustedit.models.load import LanguageModel
from robustedit.models.prefix import PrefixCachedBatch
from robustedit.models.text import fill, pad, pad_id, target_ids
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


@dataclass
class ValueResult:
    target: torch.Tensor  # v* (d_out,); z for site="layer_out"
    target_init: torch.Tensor  # v₀ (d_out,)
    delta: torch.Tensor  # δ (d_out,)
    losses: list[float] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.losses)


@dataclass
class _RewriteBatch:
    """Rewriting prompts then KL prompts, split at the subject's last token (see models/prefix.py).

    Column 0 of the suffix is the subject's last token in every row, where δ is added.
    """

    forward: PrefixCachedBatch
    target_rows: torch.Tensor  # (M,) row of each target token
    target_cols: torch.Tensor  # (M,) suffix column whose logits predict it
    target_tokens: torch.Tensor  # (M,)
    target_weights: torch.Tensor  # (M,) 1/len(target)/n_rewrite, so the sum is the mean NLL
    n_rewrite: int


def _rewrite_batch(lm: LanguageModel, request: EditRequest, templates: list[str], kl_prompts: tuple[str, ...]) -> _RewriteBatch:
    tok = lm.tokenizer
    rows, lookup = subject_prompts(tok, templates, request.subject)
    t_rows, t_cols, t_toks, t_w = [], [], [], []
    for i, template in enumerate(templates):
        text, _, _ = fill(template, request.subject)
        tids = target_ids(tok, text, request.target_new)
        prompt_len = len(rows[i])
        rows[i] = rows[i] + tids[:-1]  # teacher forcing: the last target token is never input
        for j, t in enumerate(tids):
            t_rows.append(i)
            t_cols.append(prompt_len - 1 + j - lookup[i])
            t_toks.append(t)
            t_w.append(1.0 / len(tids) / len(templates))
    kl_rows, kl_lookup = subject_prompts(tok, list(kl_prompts), request.subject)
    forward = PrefixCachedBatch.build(lm, rows + kl_rows, lookup + kl_lookup, pad_id(tok))
    dev = lm.device
    return _RewriteBatch(
        forward=forward,
        target_rows=torch.tensor(t_rows, device=dev),
        target_cols=torch.tensor(t_cols, device=dev),
        target_tokens=torch.tensor(t_toks, device=dev),
        target_weights=torch.tensor(t_w, device=dev),
        n_rewrite=len(templates),
    )


@torch.no_grad()
def subject_values(lm: LanguageModel, layer: int, site: str, templates: list[str], subject: str) -> torch.Tensor:
    """The current values ``(N, d_out)`` at ``site`` of ``layer`` at ``subject``'s last token in each
    template; the forward pass stops there."""
    rows, last = subject_prompts(lm.tokenizer, templates, subject)
    batch = pad(rows, pad_id(lm.tokenizer), lm.device)
    out = run_until(lm.model, site_module(lm, layer, site), output=True, input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask, use_cache=False)  # (N, T, d_out)
    return out[torch.arange(len(rows)), torch.tensor(last)].float()


def optimize_value(lm: LanguageModel, layer: int, request: EditRequest, templates: list[str], cfg: ValueConfig) -> ValueResult:
    """Find v* for ``request`` at ``cfg.site`` of ``layer``; ``templates[0]`` should be the bare prompt."""
    rb = _rewrite_batch(lm, request, templates, cfg.kl_prompts)
    module = site_module(lm, layer, cfg.site)
    n_rows = rb.forward.suffix_ids.shape[0]
    kl_rows = torch.arange(rb.n_rewrite, n_rows, device=lm.device)
    kl_cols = torch.zeros_like(kl_rows)  # the subject's last token
    # Both sites write into the residual stream, so δ has its width whatever the site.
    delta = torch.zeros(lm.d_model, device=lm.device, dtype=torch.float32, requires_grad=True)
    captured: dict[str, torch.Tensor] = {}

    def add_delta(_mod, _args, out):  # hidden: (N, S, d_out); column 0 is the subject's last token
        h = hidden_of(out)
        if "v0" not in captured:
            captured["v0"] = h[0, 0].detach().float().clone()
        return with_hidden(out, torch.cat([h[:, :1] + delta.to(h.dtype), h[:, 1:]], dim=1))

    opt = torch.optim.Adam([delta], lr=cfg.lr)
    kl_init = None
    losses: list[float] = []
    with hooked(module, post=add_delta):
        for step in range(cfg.num_steps):
            opt.zero_grad()
            hidden = rb.forward.hidden()  # (N, S, d)
            logp = torch.log_softmax(logits_at(lm, hidden, rb.target_rows, rb.target_cols).float(), dim=-1)
            nll = -(logp.gather(1, rb.target_tokens[:, None])[:, 0] * rb.target_weights).sum()
            kl_logp = torch.log_softmax(logits_at(lm, hidden, kl_rows, kl_cols).float(), dim=-1)
            if kl_init is None:
                kl_init = kl_logp.detach().clone()
            kl = cfg.kl_factor * F.kl_div(kl_init, kl_logp, log_target=True, reduction="batchmean")
            v0 = captured["v0"]
            decay = cfg.weight_decay * (delta.norm() / v0.norm() ** 2)
            loss = nll + kl + decay
            losses.append(loss.item())
            if losses[-1] < cfg.early_stop_loss or step == cfg.num_steps - 1:
                break
            loss.backward()
            opt.step()
            max_norm = cfg.clamp_norm_factor * v0.norm()
            with torch.no_grad():
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    d = delta.detach().clone()
    return ValueResult(target=captured["v0"] + d, target_init=captured["v0"], delta=d, losses=losses)
