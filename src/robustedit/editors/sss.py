"""SSS, the Semantic Sparse Space regularizer (Wang et al. 2024, "SSS: Editing Factual Knowledge in
Language Models towards Semantic Sparse Space", §5, Eq. 7–10).

A training-based editor that lowers the edit loss J(x_e, y_e) also moves the representations of
unrelated inputs near x_e. SSS steers the edit toward a region where x_e's representation is
insensitive to perturbation ("semantically sparse"), measured by the largest eigenvalue of the
rank-one matrix H = ∇ₓJᵀ∇ₓJ (Eq. 7), which the paper writes as (Eq. 9)

    λ_max = (1/m) Σᵢ ‖∇_{xᵢ} J(x_e, y_e)‖²        (m tokens xᵢ of the edit input x_e)

and mixes into the editor's own loss as L_all = (1 − C)·L_ori + C·SSS (Eq. 10, C = 0.9).
J is the per-token negative log-likelihood of the target (Eq. 8). The term is differentiated
again (``create_graph=True``), so its gradient reaches the trained parameters.

**Where the paper is ambiguous** (each choice a hyperparameter):

- *With respect to what.* The paper: the input token embeddings xᵢ (default,
  ``wrt="embeddings"``). The authors' released code takes the gradient with respect to the last
  hidden state instead (``wrt="last_hidden"``: the final layer's output after its norm, the
  input of the unembedding), which §5 also hints at ("relies on J and the last hidden states").
- *Which tokens are the m tokens.* Default: those of the edit prompt x_e as tokenised (a BOS
  token included when the tokenizer adds one), ``tokens="prompt"``; ``tokens="all"`` also
  averages over the teacher-forced target tokens fed as input.
- *Several examples in one batch.* λ_max is computed per example and averaged, like J.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from robustedit.errors import UserError
from robustedit.models.load import LanguageModel
from robustedit.models.text import Batch, pad, pad_id, target_ids

WRT = ("embeddings", "last_hidden")
TOKENS = ("prompt", "all")


@dataclass(frozen=True)
class SSSConfig:
    coefficient: float = field(default=0.9, metadata={"help": "C of Eq. 10: L = (1 − C)·L_ori + C·SSS (paper: 0.9)"})
    wrt: str = field(default="embeddings", metadata={
        "help": "gradient w.r.t. the input 'embeddings' (paper) or the 'last_hidden' state (authors' code)"})
    tokens: str = field(default="prompt", metadata={
        "help": "average ‖∇‖² over the 'prompt' tokens of x_e (paper's m) or 'all' input tokens"})

    def __post_init__(self) -> None:
        if not 0 <= self.coefficient <= 1:
            raise UserError(f"sss.coefficient (C) must be in [0, 1], got {self.coefficient}")
        if self.wrt not in WRT:
            raise UserError(f"sss.wrt must be one of {', '.join(WRT)}, got {self.wrt!r}")
        if self.tokens not in TOKENS:
            raise UserError(f"sss.tokens must be one of {', '.join(TOKENS)}, got {self.tokens!r}")


@dataclass
class TeacherForced:
    """Prompts followed by their targets, right-padded: position ``target_pos[j]`` predicts token
    ``target_tok[j]`` of example ``target_row[j]``; ``prompt_mask`` marks each prompt's tokens."""

    batch: Batch
    prompt_mask: torch.Tensor  # (B, T) bool
    target_row: torch.Tensor
    target_pos: torch.Tensor
    target_tok: torch.Tensor


def teacher_forced(lm: LanguageModel, prompts: list[str], targets: list[str]) -> TeacherForced:
    """Token rows ``prompt + target[:-1]`` for the per-token NLL of each target (Eq. 8)."""
    tok = lm.tokenizer
    rows, n_prompt, t_row, t_pos, t_tok = [], [], [], [], []
    for r, (prompt, target) in enumerate(zip(prompts, targets)):
        head = tok(prompt)["input_ids"]
        tids = target_ids(tok, prompt, target)
        for j, t in enumerate(tids):
            t_row.append(r)
            t_pos.append(len(head) - 1 + j)
            t_tok.append(t)
        rows.append(head + tids[:-1])
        n_prompt.append(len(head))
    batch = pad(rows, pad_id(tok), lm.device)
    positions = torch.arange(batch.input_ids.shape[1], device=lm.device)
    prompt_mask = positions[None, :] < torch.tensor(n_prompt, device=lm.device)[:, None]
    dev = lm.device
    return TeacherForced(batch, prompt_mask, torch.tensor(t_row, device=dev), torch.tensor(t_pos, device=dev),
                         torch.tensor(t_tok, device=dev))


def per_example_nll(logits: torch.Tensor, tf: TeacherForced) -> torch.Tensor:
    """Mean NLL over each example's target tokens ``(B,)`` (Eq. 8)."""
    picked = logits[tf.target_row, tf.target_pos]
    logp = F.log_softmax(picked.to(torch.promote_types(picked.dtype, torch.float32)), dim=-1)
    nll = -logp.gather(-1, tf.target_tok[:, None])[:, 0]
    n = logits.shape[0]
    total = nll.new_zeros(n).index_add(0, tf.target_row, nll)
    count = nll.new_zeros(n).index_add(0, tf.target_row, torch.ones_like(nll))
    return total / count


def forward(lm: LanguageModel, weights: dict[str, torch.Tensor] | None = None, **inputs):
    """The model's forward, with the parameters named in ``weights`` replaced by those tensors
    (``torch.func.functional_call``: gradients flow into them, e.g. from a hypernetwork's update)."""
    if weights is None:
        return lm.model(**inputs)
    return torch.func.functional_call(lm.model, weights, args=(), kwargs=inputs, strict=False)


def edit_loss_and_sss(lm: LanguageModel, tf: TeacherForced, cfg: SSSConfig | None,
                      weights: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(J, SSS): the mean target NLL over the batch and, if ``cfg``, Eq. 9's λ_max averaged over
    examples, built with ``create_graph`` so that it can be trained against. ``weights`` replaces
    parameters by name for this forward (:func:`forward`)."""
    embed = lm.model.get_input_embeddings()
    x = embed(tf.batch.input_ids)
    if cfg is not None and cfg.wrt == "embeddings":
        x = x.detach().requires_grad_(True)  # the embedding table is not trained; x is the leaf
    # The fused CPU attention kernels have no double backward; the math kernel computes the same.
    kernels = sdpa_kernel(SDPBackend.MATH) if cfg is not None else contextlib.nullcontext()
    with kernels:
        out = forward(lm, weights, inputs_embeds=x, attention_mask=tf.batch.attention_mask,
                      output_hidden_states=cfg is not None and cfg.wrt == "last_hidden", use_cache=False)
    nll = per_example_nll(out.logits, tf)
    J = nll.mean()
    if cfg is None:
        return J, None
    wrt = x if cfg.wrt == "embeddings" else out.hidden_states[-1]
    # Each example's J depends only on its own row, so ∇ of the batch sum gives per-example gradients.
    (grad,) = torch.autograd.grad(nll.sum(), wrt, create_graph=True)
    mask = tf.prompt_mask if cfg.tokens == "prompt" else tf.batch.attention_mask.bool()
    sq = grad.pow(2).sum(-1) * mask  # (B, T): ‖∇_{x_i} J‖²
    lam = sq.sum(-1) / mask.sum(-1)
    return J, lam.mean()


def combined_loss(original: torch.Tensor, sss: torch.Tensor | None, cfg: SSSConfig | None) -> torch.Tensor:
    """Eq. 10: (1 − C)·L_ori + C·SSS; the original loss alone without SSS."""
    if cfg is None or sss is None:
        return original
    return (1 - cfg.coefficient) * original + cfg.coefficient * sss
