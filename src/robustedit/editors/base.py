"""What every editor shares: the Delta it returns, applying and restoring it, the registry.

Compute, don't mutate (STYLE.md habit 1): ``Editor.edit`` returns a :class:`Delta` and leaves the
model as it found it; :func:`apply_delta` changes the weights and returns a :class:`Backup` whose
``restore`` puts the original bits back (a copy, not a subtraction, so it is exact).
"""

from __future__ import annotations

import abc
import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import torch

from robustedit.editors import memory as edit_memory
from robustedit.editors.adaptors import KeyAdaptor, install, uninstall
from robustedit.errors import UserError
from robustedit.models.load import LanguageModel
from robustedit.registry import Registry
from robustedit.request import EditRequest


@dataclass
class Delta:
    """Additive weight changes by parameter name, ``W ← W + weights[name]``, key adaptors by
    module name (``editors/adaptors.py``: REP's branch on the keys entering that module), and
    edits kept in a memory outside the weights (``editors/memory.py``: SERAC)."""

    weights: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)  # editor, timing, diagnostics
    # The keys (d_in, n) each weight was fitted to, by parameter name, for Editor.commit. Held in
    # memory only: ``info`` is written to JSON manifests and the saved edit holds ``weights`` alone.
    keys: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    adaptors: dict[str, KeyAdaptor] = field(default_factory=dict, repr=False)
    memory: list[edit_memory.MemoryEdit] = field(default_factory=list, repr=False)


@dataclass
class Backup:
    """The original values of the parameters a delta touched, and the adaptors and memory
    entries it installed."""

    originals: dict[str, torch.Tensor]
    model: torch.nn.Module
    adaptors: list[tuple[str, KeyAdaptor]] = field(default_factory=list)
    memory: list[edit_memory.MemoryEdit] = field(default_factory=list)

    @torch.no_grad()
    def restore(self) -> None:
        params = dict(self.model.named_parameters())
        for name, original in self.originals.items():
            params[name].copy_(original)
        modules = dict(self.model.named_modules())
        for name, adaptor in reversed(self.adaptors):
            uninstall(modules[name], adaptor)
        for entry in reversed(self.memory):
            edit_memory.uninstall(self.model, entry)


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors holding a NaN or an infinity."""
    return [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_finite(delta: Delta, what: str = "the edit") -> None:
    """Refuse a delta whose weights or adaptors hold NaN or infinity: applied, it would make the
    model predict nothing but NaN, and its scores would look like any others."""
    bad = non_finite(delta.weights)
    bad += [f"{n} (adaptor)" for n, a in delta.adaptors.items()
            if non_finite(a.state_dict())]
    if bad:
        raise UserError(f"{what} holds non-finite values (NaN or infinity) in {', '.join(bad[:3])}"
                        f"{' and more' if len(bad) > 3 else ''}; refused, the model is unchanged")


@torch.no_grad()
def add_to_weight(weight: torch.Tensor, d: torch.Tensor) -> None:
    """``weight ← weight + d`` in place, rounded once to ``weight``'s dtype.

    A delta of the weight's own dtype is added as is (what every editor returns). A delta of
    another dtype (a float32 or float64 delta saved from one model, applied to a bfloat16 / float16
    copy of it; an exact float64 difference applied to float32) is added in the wider of the two
    dtypes, at least float32, and the sum is rounded to the weight's dtype: the nearest value the
    weight can hold. It is then not bit-identical to editing the low-precision model directly (its
    editor would have computed another delta), only to ``(W.float() + d).to(W.dtype)``.
    """
    d = d.to(weight.device)
    if d.dtype == weight.dtype:
        weight.add_(d)
        return
    wide = torch.promote_types(torch.promote_types(weight.dtype, d.dtype), torch.float32)
    weight.copy_(weight.to(wide) + d.to(wide))


@torch.no_grad()
def apply_delta(lm: LanguageModel, delta: Delta) -> Backup:
    params = dict(lm.model.named_parameters())
    missing = [n for n in delta.weights if n not in params]
    modules = dict(lm.model.named_modules())
    missing += [n for n in delta.adaptors if n not in modules]
    if missing:
        raise KeyError(f"the delta names parameters or modules this model does not have: {missing}")
    check_finite(delta)
    backup = Backup({n: params[n].detach().clone() for n in delta.weights}, lm.model)
    for name, d in delta.weights.items():
        add_to_weight(params[name], d)
    for name, adaptor in delta.adaptors.items():
        install(modules[name], adaptor)
        backup.adaptors.append((name, adaptor))
    for entry in delta.memory:
        edit_memory.install(lm.model, entry)
        backup.memory.append(entry)
    return backup


@contextmanager
def applied(lm: LanguageModel, delta: Delta) -> Iterator[None]:
    """The model with ``delta`` applied inside the block, restored bit-exactly after."""
    backup = apply_delta(lm, delta)
    try:
        yield
    finally:
        backup.restore()


class Editor(abc.ABC):
    """Computes a :class:`Delta` for a list of requests; never leaves the model changed."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    # What an editor declares instead of being introspected:
    extends: ClassVar[str | None] = None  # an add-on's base editor ("rome" for "rome+rep"): its shipped settings come first
    trainer: ClassVar[str | None] = None  # "module:Class" of its training task, if `robustedit train` trains it
    wants_in_domain: ClassVar[bool] = False  # evaluation passes each request's in-domain probes (REP trains on them)
    batch_edits: ClassVar[bool] = False  # edits many facts in one call (MEMIT); others edit them one after another
    saves_to_disk: ClassVar[bool] = True  # its deltas can be saved (SERAC's edit memory cannot)

    def __init__(self, lm: LanguageModel, config: Any | None = None) -> None:
        self.lm = lm
        self.config = config if config is not None else self.config_cls()

    def prepare(self) -> None:
        """Do the one-time work (statistics, templates) up front so edit timings exclude it."""

    @abc.abstractmethod
    def edit(self, requests: list[EditRequest]) -> Delta: ...

    def settings(self) -> dict[str, Any]:
        """The resolved configuration as a plain dict (what run files record)."""
        return dataclasses.asdict(self.config)

    def commit(self, delta: Delta) -> None:
        """Called by whoever applies a delta and keeps it; editors that remember earlier edits
        (AlphaEdit's preserved keys) update that memory here; default: nothing.

        ``edit`` never updates such memory itself: a delta that is evaluated and rolled back must
        not constrain later edits.
        """


EDITORS: Registry[type[Editor]] = Registry("editor")


def register_editor(cls: type[Editor]) -> type[Editor]:
    if cls.extends is not None and cls.extends not in EDITORS:
        raise ValueError(f"editor {cls.name!r} extends {cls.extends!r}, which is not registered (register the base first)")
    EDITORS.register(cls.name, cls)
    return cls


class Stopwatch:
    """Named wall-clock phases: ``with sw("key"): ...``; ``sw.times`` in seconds."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[f"{phase}_s"] = self.times.get(f"{phase}_s", 0.0) + time.perf_counter() - t0
