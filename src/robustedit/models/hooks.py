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
    with_kwargs: bool = False,
) -> Iterator[None]:
    """Attach a forward pre-hook and/or forward hook to ``module`` for the ``with`` block.

    ``with_kwargs=True`` calls ``pre(module, args, kwargs)`` instead (see
    ``register_forward_pre_hook``)."""
    handles = []
    try:
        if pre is not None:
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=with_kwargs))
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


def hidden_of(out: torch.Tensor | tuple) -> torch.Tensor:
    """The hidden state in a module's output: decoder layers return a tensor or, in some
    architectures (GPT-J), a tuple whose first element is the hidden state."""
    return out[0] if isinstance(out, tuple) else out


def with_hidden(out: torch.Tensor | tuple, hidden: torch.Tensor) -> torch.Tensor | tuple:
    """``out`` with its hidden state replaced by ``hidden`` (same container as ``out``)."""
    return (hidden, *out[1:]) if isinstance(out, tuple) else hidden


@contextmanager
def capture_output(module: nn.Module, *, stop: bool = False) -> Iterator[list[torch.Tensor]]:
    """Collect the output hidden state of ``module`` on every call, ``(B, T, d_out)`` each.

    ``stop=True`` aborts the forward pass right after the capture, as in :func:`capture_input`.
    """
    seen: list[torch.Tensor] = []

    def post(_mod: nn.Module, _args: tuple, out) -> None:
        seen.append(hidden_of(out))
        if stop:
            raise StopForward

    with hooked(module, post=post):
        yield seen


def run_until(model: nn.Module, module: nn.Module, *, output: bool = False, **inputs) -> torch.Tensor:
    """Run ``model(**inputs)`` only until ``module`` has been reached; return its input
    ``(B, T, d_in)`` or, with ``output=True``, its output hidden state ``(B, T, d_out)``."""
    capture = capture_output if output else capture_input
    with capture(module, stop=True) as seen:
        try:
            model(**inputs)
        except StopForward:
            pass
    if not seen:
        raise RuntimeError("the forward pass never reached the hooked module")
    return seen[0]
