"""Forward hooks through one context manager that always removes them (STYLE.md habit 7)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn


class StopForward(Exception):
    """Raised inside a hook to end a forward pass once the needed layer has run."""


@contextmanager
def hooked(
    module: nn.Module,
    *,
    pre: Callable[[nn.Module, tuple], tuple | None] | None = None,
    post: Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor | None] | None = None,
) -> Iterator[None]:
    """Attach a forward pre-hook and/or forward hook to ``module`` for the ``with`` block."""
    handles = []
    try:
        if pre is not None:
            handles.append(module.register_forward_pre_hook(pre))
        if post is not None:
            handles.append(module.register_forward_hook(post))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture_input(module: nn.Module, *, stop: bool = False) -> Iterator[list[torch.Tensor]]:
    """Collect the first positional input of ``module`` on every call, ``(B, T, d_in)`` each.

    With ``stop=True`` the forward pass is aborted right after the capture (raise
    :class:`StopForward`, caught by :func:`run_until`), so layers above are never computed.
    """
    seen: list[torch.Tensor] = []

    def pre(_mod: nn.Module, args: tuple) -> None:
        seen.append(args[0])
        if stop:
            raise StopForward

    with hooked(module, pre=pre):
        yield seen


def run_until(model: nn.Module, module: nn.Module, **inputs) -> torch.Tensor:
    """Run ``model(**inputs)`` only until ``module`` is reached; return its input ``(B, T, d_in)``."""
    with capture_input(module, stop=True) as seen:
        try:
            model(**inputs)
        except StopForward:
            pass
    if not seen:
        raise RuntimeError("the forward pass never reached the hooked module")
    return seen[0]
