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

**Two forms** (``sss.form``):

- ``paper`` (default): Eq. 9 as written, λ_max = (1/m) Σᵢ ‖∇_{xᵢ} J‖² with respect to the input
  token embeddings, averaged over the m tokens of the edit prompt, per example, then over the batch.
- ``reference``: what the authors' code computes (repository MaybeLizzy/EditSSS,
  ``easyeditor/trainer/EditTrainer.py`` for MEND and SERAC, ``easyeditor/models/ft/ft_main.py``):
  the gradient of the batch's NLL (EasyEdit's ``edit_loss_fn``: the mean over every target token
  of the batch) with respect to the final hidden state (``hidden_states[-1]``, after the last
  norm: the input of the unembedding), squared and *summed* over every position and example,
  without 1/m. A final hidden state reaches the loss only through its own position's logits, so
  only the positions that predict a target token contribute, each ‖W_Uᵀ(p − e_y)‖²/N² for N
  target tokens: the term shrinks to 0 as the model grows sure of the target, like a confidence
  term, rather than measuring sensitivity to the prompt.

**Where paper, authors' code and ours differ**:

| point | paper | authors' code | ours |
|---|---|---|---|
| gradient w.r.t. | input embeddings (Eq. 9) | final hidden state | ``form`` (``paper`` also takes ``wrt="last_hidden"``) |
| over tokens | mean over the m prompt tokens | sum over all positions | ``paper``: ``tokens`` (prompt / all), mean; ``reference``: sum |
| FT-L | SSS applied (Table 1) | never applied: ``'SSS' in alg_name.lower()`` is always false | applied in both forms |
| gradient through the term | implied (Eq. 10 is a loss) | none in the first release, ``create_graph`` added later | through it; ``detach=true`` cuts it |
| MEND mixing | (1 − C)·L + C·SSS | C·SSS + (1 − C)(0.1·l_edit + l_loc) | the code's (``training/mend.py``) |
| SERAC mixing | (1 − C)·L + C·SSS | only l_edit of the counterfactual model | the code's (``training/serac.py``)¹ |

¹ The paper's mixing would also scale the scope classifier's loss by (1 − C). The classifier's
parameters are disjoint from the counterfactual model's and Adam's steps do not change when a
parameter's whole gradient is scaled (up to its ε), so the two mixings train the same editor; one
is offered.

``detach=true`` keeps the value of the term in the loss but carries no gradient through it, so
L = (1 − C)·L_ori + C·SSS then trains exactly as (1 − C)·L_ori: the control that tells "SSS
helps" from "scaling the loss by 1 − C helps" (the authors' first release trained that way).
Measured: with Adam (FT-L here; MEND and SERAC in training) scaling the whole loss by 1 − C leaves
every step unchanged up to Adam's ε (m/√v is scale-free), so the detached FT-L edit equals FT-L's
on every case (``benchmarks/sss_calibrate.py --detached``; ``docs/results/sss-calibrate-smollm2``).
A gain of the first release over its base editor therefore cannot come from the rescaling: only
gradient clipping and run-to-run noise separate the two.

**Where the paper is ambiguous** (``form="paper"``; each choice a hyperparameter):

- *With respect to what.* The paper: the input token embeddings xᵢ (default,
  ``wrt="embeddings"``); ``wrt="last_hidden"`` takes the final hidden state but keeps the
  paper's mean over the prompt tokens (§5 also hints at it: "relies on J and the last hidden
  states"). It is not the authors' quantity (``form="reference"``).
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
from robustedit.models.hooks import hooked
from robustedit.models.load import LanguageModel
from robustedit.models.text import Batch, pad, pad_id, target_ids

FORMS = ("paper", "reference")
WRT = ("embeddings", "last_hidden")
TOKENS = ("prompt", "all")


@dataclass(frozen=True)
class SSSConfig:
    coefficient: float = field(default=0.9, metadata={"help": "C of Eq. 10: L = (1 − C)·L_ori + C·SSS (paper: 0.9)"})
    form: str = field(default="paper", metadata={
        "help": "'paper': Eq. 9, mean ‖∇ₓJ‖² over the prompt's embeddings; 'reference': the authors' code, "
                "Σ ‖∇J‖² over every position of the final hidden state"})
    detach: bool = field(default=False, metadata={
        "help": "control: keep the term's value in the loss but no gradient through it (= scaling the loss by 1 − C)"})
    wrt: str = field(default="embeddings", metadata={
        "help": "form=paper: gradient w.r.t. the input 'embeddings' (paper) or the 'last_hidden' state"})
    tokens: str = field(default="prompt", metadata={
        "help": "form=paper: average ‖∇‖² over the 'prompt' tokens of x_e (paper's m) or 'all' input tokens"})

    def __post_init__(self) -> None:
        if not 0 <= self.coefficient <= 1:
            raise UserError(f"sss.coefficient (C) must be in [0, 1], got {self.coefficient}")
        if self.form not in FORMS:
            raise UserError(f"sss.form must be one of {', '.join(FORMS)}, got {self.form!r}")
        if self.wrt not in WRT:
            raise UserError(f"sss.wrt must be one of {', '.join(WRT)}, got {self.wrt!r}")
        if self.tokens not in TOKENS:
            raise UserError(f"sss.tokens must be one of {', '.join(TOKENS)}, got {self.tokens!r}")


@dataclass
class TeacherForced:
    """Prompts followed by their targets, right-padded: position ``target_pos[j]`` predicts token
    ``target_tok[j]`` of example ``target_row[j]``; ``prompt_mask`` marks each prompt's tokens.

    ``keep`` lists (sorted) the positions that predict some target: a forward given
    ``logits_to_keep=keep`` projects only those onto the vocabulary, where ``target_col[j]`` is
    ``target_pos[j]``'s column. Nothing else reads the logits, so the loss, its gradients and SSS
    are unchanged, and a step is 1.2–1.3× (SmolLM2, 49k tokens) to 1.7–1.9× (Gemma 3, 262k) faster
    (``benchmarks/edit_loss_step.py``)."""

    batch: Batch
    prompt_mask: torch.Tensor  # (B, T) bool
    target_row: torch.Tensor
    target_pos: torch.Tensor
    target_tok: torch.Tensor
    keep: torch.Tensor
    target_col: torch.Tensor

    def target_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits that predict each target token ``(N, V)``, from all positions' logits or
        from those of ``keep`` only (when every position is kept the two index alike)."""
        full = logits.shape[1] == self.batch.input_ids.shape[1]
        return logits[self.target_row, self.target_pos if full else self.target_col]


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
    keep = sorted(set(t_pos))
    col = {p: i for i, p in enumerate(keep)}
    return TeacherForced(batch, prompt_mask, torch.tensor(t_row, device=dev), torch.tensor(t_pos, device=dev),
                         torch.tensor(t_tok, device=dev), torch.tensor(keep, device=dev),
                         torch.tensor([col[p] for p in t_pos], device=dev))


def per_example_nll(logits: torch.Tensor, tf: TeacherForced) -> torch.Tensor:
    """Mean NLL over each example's target tokens ``(B,)`` (Eq. 8); ``logits`` of every position or
    of ``tf.keep``'s."""
    picked = tf.target_logits(logits)
    logp = F.log_softmax(picked.to(torch.promote_types(picked.dtype, torch.float32)), dim=-1)
    nll = -logp.gather(-1, tf.target_tok[:, None])[:, 0]
    n = tf.batch.input_ids.shape[0]
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
    """(J, SSS): the mean target NLL over the batch and, if ``cfg``, the SSS term of its ``form``
    (module docstring), built with ``create_graph`` so that it can be trained against (detached
    with ``cfg.detach``). ``weights`` replaces parameters by name for this forward (:func:`forward`)."""
    embed = lm.model.get_input_embeddings()
    x = embed(tf.batch.input_ids)
    on_embeddings = cfg is not None and cfg.form == "paper" and cfg.wrt == "embeddings"
    if on_embeddings:
        x = x.detach().requires_grad_(True)  # the embedding table is not trained; x is the leaf
    # The fused CPU attention kernels have no double backward; the math kernel computes the same.
    second_order = cfg is not None and not cfg.detach and on_embeddings
    kernels = sdpa_kernel(SDPBackend.MATH) if second_order else contextlib.nullcontext()
    final = _final_hidden(lm) if cfg is not None and not on_embeddings else contextlib.nullcontext([])
    with kernels, final as hidden:
        out = forward(lm, weights, inputs_embeds=x, attention_mask=tf.batch.attention_mask, use_cache=False,
                      logits_to_keep=tf.keep)
    nll = per_example_nll(out.logits, tf)
    J = nll.mean()
    if cfg is None:
        return J, None
    if cfg.form == "reference":
        sss = _reference_sss(out.logits, hidden[-1], tf, create_graph=not cfg.detach)
    else:
        wrt = x if on_embeddings else hidden[-1]
        # Each example's J depends only on its own row, so ∇ of the batch sum gives per-example gradients.
        (grad,) = torch.autograd.grad(nll.sum(), wrt, create_graph=not cfg.detach, retain_graph=True)
        mask = tf.prompt_mask if cfg.tokens == "prompt" else tf.batch.attention_mask.bool()
        sq = grad.pow(2).sum(-1) * mask  # (B, T): ‖∇_{x_i} J‖²
        sss = (sq.sum(-1) / mask.sum(-1)).mean()
    return J, (sss.detach() if cfg.detach else sss)


@contextlib.contextmanager
def _final_hidden(lm: LanguageModel):
    """The final hidden state (the final norm's output, the unembedding's input) of each forward
    in the block, made a leaf that requires grad when nothing upstream is trained (a frozen model:
    the term can still be computed)."""
    seen: list[torch.Tensor] = []

    def post(_module, _args, out):
        if not out.requires_grad:
            out = out.detach().requires_grad_(True)
        seen.append(out)
        return out

    with hooked(lm.module(lm.spec.final_norm), post=post):
        yield seen


def _reference_sss(logits: torch.Tensor, hidden: torch.Tensor, tf: TeacherForced, create_graph: bool) -> torch.Tensor:
    """The authors' term: Σ over every position and example of ‖∇_h NLL‖², the NLL being the mean
    over all target tokens of the batch (EasyEdit's ``edit_loss_fn``), h the final hidden state
    (every position's: those whose logits were not kept have a zero gradient, as in the reference)."""
    picked = tf.target_logits(logits)
    logp = F.log_softmax(picked.to(torch.promote_types(picked.dtype, torch.float32)), dim=-1)
    batch_nll = -logp.gather(-1, tf.target_tok[:, None]).mean()
    (grad,) = torch.autograd.grad(batch_nll, hidden, create_graph=create_graph, retain_graph=True)
    return grad.float().pow(2).sum()


def combined_loss(original: torch.Tensor, sss: torch.Tensor | None, cfg: SSSConfig | None) -> torch.Tensor:
    """Eq. 10: (1 − C)·L_ori + C·SSS; the original loss alone without SSS."""
    if cfg is None or sss is None:
        return original
    return (1 - cfg.coefficient) * original + cfg.coefficient * sss
