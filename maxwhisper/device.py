"""A device string (`cpu`, `gpu`, `gpu:N`), parsed once into what MAX and PyTorch each call it.

No MAX or torch import here: the reference side and the CLI parse devices too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    kind: str        # "cpu" | "gpu" (an NVIDIA GPU: the kind the precision table has a row for)
    index: int = 0

    @property
    def name(self) -> str:
        return "cpu" if self.kind == "cpu" else f"gpu:{self.index}"

    @property
    def torch(self) -> str:
        """PyTorch's name for the same device: the yardstick runs on the kind of device MAX runs on."""
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    def __str__(self) -> str:
        return self.name


def parse_device(spec: str | Device) -> Device:
    """`cpu`, `gpu` or `gpu:N` as a `Device`, or a ValueError naming the bad string."""
    if isinstance(spec, Device):
        return spec
    kind, colon, index = str(spec).strip().partition(":")
    if kind == "cpu" and not colon:
        return Device("cpu")
    if kind == "gpu" and (not colon or index.isdigit()):
        return Device("gpu", int(index or 0))
    raise ValueError(f"device {spec!r}: expected 'cpu', 'gpu' or 'gpu:N'")
