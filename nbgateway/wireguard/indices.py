"""Receiver indices shared by several devices behind one UDP port."""

from __future__ import annotations

from typing import Any


class IndexRegistry:
    """Receiver indices shared by several devices behind one UDP port, so a
    datagram's receiver index names exactly one device (see :mod:`.mux`)."""

    def __init__(self) -> None:
        self.owners: dict[int, Any] = {}

    def claim(self, index: int, device: Any) -> bool:
        if index in self.owners:
            return False
        self.owners[index] = device
        return True

    def release(self, index: int) -> None:
        self.owners.pop(index, None)
