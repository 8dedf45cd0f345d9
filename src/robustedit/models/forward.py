"""Logits only where they are needed: the LM head is applied to chosen positions.

The head of a small model is a large share of its compute (SmolLM2: 49152×576, ~22% of a forward
pass), and editors and scoring need next-token distributions at a handful of positions only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustedit.models.load import LanguageModel
from robustedit.models.text import Batch


# The attribute an edit memory (``editors/memory.py``) holds on the causal-LM wrapper while it
# reroutes the wrapper's logits; the model layer reads it without knowing any editor.
LOGIT_ROUTER = "_robustedit_memory"


def reroutes_logits(model: torch.nn.Module) -> bool:
    """True while something rewrites the causal-LM wrapper's output logits (SERAC's edit memory):
    such a model must run its full forward over every token, never the faster base-model path,
    packed rows or a KV-cached step."""
    return getattr(model, LOGIT_ROUTER, None) is not None


def hidden_states(lm: LanguageModel, batch: Batch) -> torch.Tensor:
    """Final (normed) hidden states ``(B, T, d)`` of the base model."""
    out = lm.base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def logits_at(lm: LanguageModel, hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``(N, V)`` at positions ``(rows[n], cols[n])`` of ``hidden``."""
    logits = lm.lm_head(hidden[rows, cols])
    config = lm.model.config.get_text_config() if hasattr(lm.model.config, "get_text_config") else lm.model.config
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:  # Gemma 2/3 squash logits in the causal-LM wrapper, which we bypass
        logits = torch.tanh(logits / cap) * cap
    return logits


def position_logits(lm: LanguageModel, batch: Batch, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``(N, V)`` at ``(rows[n], cols[n])`` of ``batch``. A model with a forward
    hook on its causal-LM wrapper (an edit memory that reroutes its output, ``editors/memory.py``)
    runs its full forward, so that the hook sees and rewrites the logits it is responsible for."""
    if reroutes_logits(lm.model):
        out = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        return out.logits[rows, cols]
    return logits_at(lm, hidden_states(lm, batch), rows, cols)


def packed_hidden_states(lm: LanguageModel, input_ids: torch.Tensor, mask: torch.Tensor,
                         position_ids: torch.Tensor) -> torch.Tensor:
    """Final hidden states ``(B, T, d)`` of packed rows (``models.packing``): a custom 4D additive
    mask and explicit positions, which every supported architecture's base model accepts."""
    out = lm.base(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


@dataclass(frozen=True)
class Prediction:
    token: str  # decoded as it follows the prompt (a leading space included)
    prob: float


@torch.inference_mode()
def top_next_tokens(lm: LanguageModel, text: str, k: int = 1) -> list[Prediction]:
    """The ``k`` most likely next tokens after ``text`` with their probabilities, from the model's
    full forward pass (so an edit memory that reroutes the logits, SERAC's, is seen)."""
    ids = lm.tokenizer(text, return_tensors="pt").to(lm.device)
    probs = lm.model(**ids).logits[0, -1].float().softmax(-1)
    p, idx = probs.topk(k)
    return [Prediction(lm.tokenizer.decode(int(i)), float(x)) for x, i in zip(p, idx)]
