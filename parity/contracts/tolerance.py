"""The one tolerance resolver: profile x device x dtype x per-capture overrides. Every verdict goes through it."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from parity.contracts.recipe import TOLERANCE_PRESETS, NonfiniteAllowance, TolerancePolicy, TolerancePreset
from parity.contracts.report import ToleranceWidening

DTYPE_PROFILES: dict[str, TolerancePreset] = {"bfloat16": "bf16", "float16": "fp16"}
"""A forward computed in a reduced dtype is judged by that dtype's profile, whatever the recipe says."""


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    reason: str | None
    """Written reason of the override that applied (None for profile defaults)."""
    profile: TolerancePreset
    """Profile the defaults came from."""
    nonfinite: NonfiniteAllowance | None = None
    """The recipe's declaration that lets this name hold NaN/Inf (None: any NaN/Inf fails)."""


def effective_profile(policy: TolerancePolicy, *, device: str = "cpu", dtype: str = "float32") -> TolerancePreset:
    """The profile a comparison is judged by: a reduced compute dtype picks its own profile; an fp32 recipe written
    for the CPU is judged by fp32-cuda when either side ran on a GPU (TF32 stays off)."""
    if dtype in DTYPE_PROFILES:
        return DTYPE_PROFILES[dtype]
    if device.startswith("cuda") and policy.profile == "fp32-cpu":
        return "fp32-cuda"
    return policy.profile


def resolve(policy: TolerancePolicy, name: str, *, device: str = "cpu", dtype: str = "float32") -> Tolerance:
    """Tolerance for one capture. On the recipe's own profile: the first override whose fnmatch pattern matches the
    name, else the recipe-wide atol/rtol, else the preset. On a looser profile picked by device or dtype, each value
    is the larger of that and the looser preset's: a recipe can loosen a capture, never make a device stricter."""
    profile = effective_profile(policy, device=device, dtype=dtype)
    preset_atol, preset_rtol = TOLERANCE_PRESETS[policy.profile]
    atol = policy.atol if policy.atol is not None else preset_atol
    rtol = policy.rtol if policy.rtol is not None else preset_rtol
    reason = None
    for pattern, override in policy.overrides.items():
        if fnmatch.fnmatchcase(name, pattern):
            atol, rtol, reason = override.atol, override.rtol, override.reason
            break
    if profile != policy.profile:
        looser_atol, looser_rtol = TOLERANCE_PRESETS[profile]
        atol, rtol = max(atol, looser_atol), max(rtol, looser_rtol)
    return Tolerance(atol=atol, rtol=rtol, reason=reason, profile=profile, nonfinite=nonfinite_allowance(policy, name))


def nonfinite_allowance(policy: TolerancePolicy, name: str) -> NonfiniteAllowance | None:
    """The first NaN/Inf declaration whose fnmatch pattern matches `name` (a capture or a state-dict key)."""
    return next((allowance for pattern, allowance in policy.nonfinite.items() if fnmatch.fnmatchcase(name, pattern)),
                None)


def widenings(dump: TolerancePolicy, registry: TolerancePolicy, names: list[str], *, device: str = "cpu",
              dtype: str = "float32") -> list[ToleranceWidening]:
    """Every name the dump's own recipe judges more loosely than the registry's recipe of the same id would: a larger
    atol or rtol, or NaN/Inf values the registry does not allow. A dump from elsewhere carries its own recipe; this is
    how a report says so when that recipe widened its tolerance."""
    found = []
    for name in names:
        mine = resolve(dump, name, device=device, dtype=dtype)
        theirs = resolve(registry, name, device=device, dtype=dtype)
        allowed = set(mine.nonfinite.values if mine.nonfinite else ()) - set(
            theirs.nonfinite.values if theirs.nonfinite else ())
        if mine.atol > theirs.atol or mine.rtol > theirs.rtol or allowed:
            found.append(ToleranceWidening(name=name, dump_atol=mine.atol, dump_rtol=mine.rtol,
                                           registry_atol=theirs.atol, registry_rtol=theirs.rtol,
                                           nonfinite_only_in_dump=sorted(allowed), dump_reason=mine.reason or (
                                               mine.nonfinite.reason if allowed and mine.nonfinite else None)))
    return found
