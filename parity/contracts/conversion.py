"""ConversionRecord: strict weight accounting of one conversion, written as conversion.json."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from parity.contracts.base import Strict

RuleOp = Literal["rename", "copy", "split", "merge", "transpose", "drop"]
"""What a declared mapping rule does to the original key(s) it claims."""


class KeyMapping(Strict):
    op: RuleOp
    """What happened to the source key(s)."""
    rule: str
    """Name of the declared rule that matched."""
    sources: list[str]
    """Original key(s)."""
    targets: list[str]
    """Port key(s); empty for drop."""


class ConversionRecord(Strict):
    """Strict weight accounting: every original key went somewhere by a declared rule, every port key was filled."""

    recipe_id: str
    """Variant converted."""
    source_keys: int
    """Tensors in the original state dict."""
    target_keys: int
    """Tensors the port model expects (in-memory names)."""
    mappings: list[KeyMapping]
    """One entry per source key group."""
    missing: list[str] = Field(default_factory=list)
    """Port keys nothing was written to (an error)."""
    unused: list[str] = Field(default_factory=list)
    """Original keys no rule claimed (an error)."""
    shape_errors: list[str] = Field(default_factory=list)
    """Keys whose converted shape differs from the port's (an error)."""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unused or self.shape_errors)

    def error_line(self) -> str:
        """The one-line refusal when accounting failed."""
        parts = []
        for label, keys in (("unmapped original keys", self.unused), ("port keys left empty", self.missing),
                            ("shape errors", self.shape_errors)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})")
        return "strict weight accounting failed: " + "; ".join(parts)
