"""Declared mapping rules and strict weight accounting: every original key claimed by a rule, every port key filled,
every shape checked."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from parity.contracts.conversion import ConversionRecord, KeyMapping, RuleOp

Transform = Callable[[torch.Tensor], list[torch.Tensor]]


@dataclass(frozen=True)
class Rule:
    """One declared mapping rule: a full-match regex over original keys and what the match becomes."""

    name: str
    """What the rule maps, in words (shown in conversion.json)."""
    pattern: str
    """Full-match regex over original keys."""
    targets: tuple[str, ...]
    """Port key template(s) (regex replacement syntax); empty for drop."""
    op: RuleOp = "rename"
    """What the rule does (recorded per mapping)."""
    transform: Transform | None = None
    """For split/transpose: original tensor -> one tensor per target."""


def rename(name: str, pattern: str, target: str) -> Rule:
    return Rule(name, pattern, (target,))


def drop(name: str, pattern: str) -> Rule:
    return Rule(name, pattern, (), op="drop")


def split_rows(parts: int) -> Transform:
    """A fused projection (qkv, in_proj) whose rows are `parts` equal blocks in order, e.g. q, k, v."""

    def split(tensor: torch.Tensor) -> list[torch.Tensor]:
        if tensor.shape[0] % parts:
            raise ValueError(f"fused tensor with {tensor.shape[0]} rows does not split into {parts} equal blocks")
        return [chunk.clone() for chunk in tensor.chunk(parts, dim=0)]

    return split


def split(name: str, pattern: str, targets: Iterable[str], parts: int | None = None) -> Rule:
    """A fused tensor split row-wise into len(targets) blocks (qkv -> q, k, v)."""
    targets = tuple(targets)
    return Rule(name, pattern, targets, op="split", transform=split_rows(parts or len(targets)))


def transpose(name: str, pattern: str, target: str) -> Rule:
    """x @ P storage (in, out) -> nn.Linear (out, in)."""
    return Rule(name, pattern, (target,), op="transpose", transform=lambda t: [t.t().contiguous()])


def convert_state_dict(
    recipe_id: str,
    source: dict[str, torch.Tensor],
    rules: Iterable[Rule],
    expected: dict[str, torch.Size],
) -> tuple[dict[str, torch.Tensor], ConversionRecord]:
    """Apply rules with strict accounting: unclaimed source keys, unfilled targets and bad shapes are all errors."""
    compiled = [(rule, re.compile(rule.pattern)) for rule in rules]
    converted: dict[str, torch.Tensor] = {}
    mappings: list[KeyMapping] = []
    unused: list[str] = []
    shape_errors: list[str] = []
    for key, tensor in source.items():
        for rule, regex in compiled:
            match = regex.fullmatch(key)
            if match:
                break
        else:
            unused.append(key)
            continue
        targets = [match.expand(t) for t in rule.targets]
        values = rule.transform(tensor) if rule.transform else [tensor] * len(targets)
        for target, value in zip(targets, values):
            if target in converted:
                shape_errors.append(f"{target} written twice (second time from {key})")
            converted[target] = value
        mappings.append(KeyMapping(op=rule.op, rule=rule.name, sources=[key], targets=targets))
    for target, value in converted.items():
        if target in expected and tuple(expected[target]) != tuple(value.shape):
            shape_errors.append(f"{target}: converted {tuple(value.shape)} but the port expects {tuple(expected[target])}")
    unexpected = sorted(set(converted) - set(expected))
    shape_errors.extend(f"{t}: no such tensor in the port model" for t in unexpected)
    record = ConversionRecord(
        recipe_id=recipe_id,
        source_keys=len(source),
        target_keys=len(expected),
        mappings=mappings,
        missing=sorted(set(expected) - set(converted)),
        unused=unused,
        shape_errors=shape_errors,
    )
    return converted, record
