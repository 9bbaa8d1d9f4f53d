"""The one tolerance resolver: profile x device x dtype x overrides, each combination with its known answer."""

from __future__ import annotations

import pytest

from parity.contracts.recipe import TOLERANCE_PRESETS, ToleranceOverride, TolerancePolicy
from parity.contracts.tolerance import effective_profile, resolve

REASON = "measured drift of 4e-4 on this capture, on a full-size random checkpoint"
POLICY = TolerancePolicy(overrides={
    "enc.*": ToleranceOverride(atol=1e-3, rtol=0, reason=REASON),
    "dec.logits": ToleranceOverride(atol=5e-5, rtol=2e-3, reason=REASON),
})


@pytest.mark.parametrize("device,dtype,profile", [
    ("cpu", "float32", "fp32-cpu"),
    ("cuda", "float32", "fp32-cuda"),
    ("cuda:1", "float32", "fp32-cuda"),
    ("cpu", "bfloat16", "bf16"),
    ("cuda", "bfloat16", "bf16"),
    ("cpu", "float16", "fp16"),
    ("cuda", "float16", "fp16"),
])
def test_profile_follows_device_and_dtype(device, dtype, profile):
    assert effective_profile(TolerancePolicy(), device=device, dtype=dtype) == profile


def test_a_recipe_that_chose_a_profile_keeps_it_in_fp32():
    assert effective_profile(TolerancePolicy(profile="bf16"), device="cuda") == "bf16"
    assert resolve(TolerancePolicy(profile="fp16"), "x").atol == TOLERANCE_PRESETS["fp16"][0]


@pytest.mark.parametrize("name,device,dtype,expected", [
    ("dec.out", "cpu", "float32", (1e-5, 1e-4, None)),                    # preset
    ("enc.blocks.3", "cpu", "float32", (1e-3, 0.0, REASON)),              # override as written
    ("dec.logits", "cpu", "float32", (5e-5, 2e-3, REASON)),
    ("dec.out", "cuda", "float32", (1e-4, 1e-3, None)),                   # the looser device preset
    ("enc.blocks.3", "cuda", "float32", (1e-3, 1e-3, REASON)),            # override kept, rtol raised to the device's
    ("dec.logits", "cuda", "float32", (1e-4, 2e-3, REASON)),              # atol raised to the device's
    ("enc.blocks.3", "cpu", "bfloat16", (3e-2, 3e-2, REASON)),            # dtype profile dominates
    ("dec.out", "cuda", "float16", (5e-3, 5e-3, None)),
])
def test_overrides_never_make_a_device_or_dtype_stricter(name, device, dtype, expected):
    tol = resolve(POLICY, name, device=device, dtype=dtype)
    assert (tol.atol, tol.rtol, tol.reason) == expected


def test_recipe_wide_values_replace_the_preset_and_the_first_matching_override_wins():
    policy = TolerancePolicy(atol=2e-5, overrides={
        "a.*": ToleranceOverride(atol=1e-4, rtol=1e-4, reason=REASON),
        "a.b": ToleranceOverride(atol=9.0, rtol=9.0, reason=REASON)})
    assert (resolve(policy, "z").atol, resolve(policy, "z").rtol) == (2e-5, 1e-4)
    assert resolve(policy, "a.b").atol == 1e-4
    assert resolve(policy, "z", device="cuda").atol == 1e-4
