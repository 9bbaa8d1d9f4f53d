"""Deliberate corruptions of the converted weights, to prove the comparison catches mapping mistakes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from parity.contracts.base import Strict

MutationKind = Literal["swap", "swap-chunks", "swap-prefix", "transpose", "zero", "scale", "drop"]


class Mutation(Strict):
    """One corruption of the converted (port-side) state dict."""

    kind: MutationKind
    """swap two tensors, swap two row chunks of one tensor, swap two key prefixes (off-by-one layers), transpose,
    zero, scale, or drop a tensor (strict accounting must refuse the last)."""
    key: str
    """Port key (or key prefix for swap-prefix) the corruption applies to."""
    other: str | None = None
    """Second key / prefix for swap and swap-prefix."""
    chunks: int | None = Field(default=None, ge=2)
    """Number of row chunks for swap-chunks (e.g. 3 for a fused qkv)."""
    i: int | None = Field(default=None, ge=0)
    """First chunk index for swap-chunks."""
    j: int | None = Field(default=None, ge=0)
    """Second chunk index for swap-chunks."""
    factor: float = 1.01
    """Multiplier for scale."""

    @model_validator(mode="after")
    def _fields_for_kind(self) -> Mutation:
        if self.kind in ("swap", "swap-prefix") and not self.other:
            raise ValueError(f"{self.kind} needs 'other'")
        if self.kind == "swap-chunks":
            if None in (self.chunks, self.i, self.j):
                raise ValueError("swap-chunks needs 'chunks', 'i' and 'j'")
            if max(self.i, self.j) >= self.chunks or self.i == self.j:
                raise ValueError("swap-chunks needs two different chunk indices below 'chunks'")
        return self

    def label(self) -> str:
        return f"{self.kind} {self.key}" + (f" <-> {self.other}" if self.other else "")
