"""Edits kept in a memory outside the weights (SERAC): the model's output is rerouted, not its
parameters changed.

A memory-based editor returns its edits as :class:`MemoryEdit` entries of ``Delta.memory``.
Applying the delta adds them to the model's :class:`EditMemory`, one forward hook on the root
``*ForCausalLM`` shared by every entry; the hook hands each forward's token ids and logits to the
entries' :class:`Router` together with the whole memory, and the router may replace rows of the
logits (SERAC: rows whose input its scope classifier puts in the scope of a remembered edit get
the counterfactual model's logits). Removing the last entry removes the hook: the model is then
exactly the model it was.

A forward by ``inputs_embeds`` has no token ids to read and is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from robustedit.editors.installed import InstalledList
from robustedit.models.forward import LOGIT_ROUTER
from robustedit.request import EditRequest


class Router(Protocol):
    def reroute(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits: torch.Tensor,
                memory: list[EditRequest]) -> torch.Tensor: ...


@dataclass(eq=False)
class MemoryEdit:
    """One remembered edit and the trained system that answers for it."""

    request: EditRequest
    router: Router


class EditMemory(InstalledList):
    """Every :class:`MemoryEdit` installed on one model, served by one forward hook."""

    ATTRIBUTE = LOGIT_ROUTER  # models.forward.reroutes_logits reads it

    @property
    def entries(self) -> list[MemoryEdit]:
        return self.items

    def register(self):
        return self.module.register_forward_hook(self._hook, with_kwargs=True)

    def add(self, entry: MemoryEdit) -> None:
        if self.entries and entry.router is not self.entries[0].router:
            raise ValueError("one model's edit memory is served by one trained system; undo the other edits first")
        super().add(entry)

    def _hook(self, _module, args, kwargs, output):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None or not self.entries or getattr(output, "logits", None) is None:
            return output
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        output.logits = self.entries[0].router.reroute(input_ids, mask, output.logits,
                                                       [e.request for e in self.entries])
        return output


def install(model: nn.Module, entry: MemoryEdit) -> None:
    EditMemory.of(model).add(entry)


def uninstall(model: nn.Module, entry: MemoryEdit) -> None:
    memory = getattr(model, EditMemory.ATTRIBUTE, None)
    if memory is not None:
        memory.remove(entry)
