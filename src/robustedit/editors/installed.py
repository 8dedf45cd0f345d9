"""What REP's key adaptors and SERAC's edit memory share: objects installed on one module and
served by one hook, kept on the module (attribute ``ATTRIBUTE``) while there are any.

Removing the last one removes the hook and the attribute, so the module is then exactly the
module it was.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn
from torch.utils.hooks import RemovableHandle


class InstalledList:
    ATTRIBUTE: ClassVar[str]

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.items: list[Any] = []
        self._handle: RemovableHandle | None = None

    @classmethod
    def of(cls, module: nn.Module):
        found = getattr(module, cls.ATTRIBUTE, None)
        if found is None:
            found = cls(module)
            setattr(module, cls.ATTRIBUTE, found)
        return found

    @classmethod
    def installed(cls, module: nn.Module) -> list:
        found = getattr(module, cls.ATTRIBUTE, None)
        return list(found.items) if found is not None else []

    def register(self) -> RemovableHandle:
        """Put the hook that serves the list on ``self.module``."""
        raise NotImplementedError

    def add(self, item: Any) -> None:
        self.items.append(item)
        if self._handle is None:
            self._handle = self.register()

    def remove(self, item: Any) -> None:
        self.items = [i for i in self.items if i is not item]
        if not self.items:
            if self._handle is not None:
                self._handle.remove()
            self._handle = None
            if getattr(self.module, self.ATTRIBUTE, None) is self:
                delattr(self.module, self.ATTRIBUTE)
