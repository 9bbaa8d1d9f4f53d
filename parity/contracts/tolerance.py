"""The one tolerance resolver: profile x device x dtype x per-capture overrides. Every verdict goes through it."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from parity.contracts.recipe import TOLERANCE_PRESETS, TolerancePolicy, TolerancePreset

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
    return Tolerance(atol=atol, rtol=rtol, reason=reason, profile=profile)
