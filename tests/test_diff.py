"""The comparison engine on hand-built arrays whose answers are known."""

from __future__ import annotations

import numpy as np

from parity.contracts.metrics import compare, mark_first_divergence
from parity.contracts.recipe import NonfiniteAllowance


def test_metrics_on_a_known_difference():
    origin = np.array([1.0, -2.0, 4.0, 0.0], dtype=np.float32)
    port = np.array([1.0, -2.0, 4.5, 0.0], dtype=np.float32)
    r = compare("x", 0, origin, port, atol=0.1, rtol=0.0)
    assert r.verdict == "fail"
    assert r.max_abs == 0.5 and r.max_rel == 0.125 and r.mean_abs == 0.125
    assert r.worst_index == [2]
    assert r.mismatch_fraction == 0.25
    assert abs(r.rms - 0.25) < 1e-12
    assert r.atol_needed == 0.5
    assert abs(r.rtol_needed - 0.1) < 1e-12


def test_smallest_passing_tolerances_really_pass():
    rng = np.random.default_rng(0)
    origin = rng.normal(size=(64,)).astype(np.float32)
    port = origin + rng.normal(scale=1e-4, size=(64,)).astype(np.float32)
    r = compare("x", 0, origin, port, atol=1e-6, rtol=1e-5)
    assert r.verdict == "fail"
    assert compare("x", 0, origin, port, atol=r.atol_needed * (1 + 1e-9), rtol=1e-5).verdict == "pass"
    assert compare("x", 0, origin, port, atol=1e-6, rtol=r.rtol_needed * (1 + 1e-9)).verdict == "pass"


def test_shape_dtype_nan_and_missing_are_their_own_verdicts():
    a = np.zeros((2, 3), dtype=np.float32)
    assert compare("x", 0, a, np.zeros((3, 2), dtype=np.float32), 1e-5, 1e-4).verdict == "shape-mismatch"
    assert compare("x", 0, a, np.zeros((2, 3), dtype=np.int64), 1e-5, 1e-4).verdict == "dtype-mismatch"
    nan = a.copy()
    nan[0, 0] = np.nan
    r = compare("x", 0, a, nan, 1e-5, 1e-4)
    assert r.verdict == "nonfinite" and r.nonfinite_port == 1 and r.nonfinite_origin == 0
    assert compare("x", 0, a, None, 1e-5, 1e-4).verdict == "missing"


def test_nan_at_the_same_positions_fails_unless_the_recipe_declares_it():
    nan = np.zeros((2, 3), dtype=np.float32)
    nan[0, 0] = np.nan
    same = compare("x", 0, nan, nan.copy(), 1e-5, 1e-4)
    assert same.verdict == "nonfinite" and same.nonfinite_origin == same.nonfinite_port == 1
    assert "nan" in same.note
    allowed = NonfiniteAllowance(values=["nan"], reason="the original masks padded tokens with NaN on purpose")
    declared = compare("x", 0, nan, nan.copy(), 1e-5, 1e-4, nonfinite=allowed)
    assert declared.verdict == "pass" and declared.nonfinite_reason == allowed.reason
    moved = nan.copy()
    moved[0, 0], moved[1, 2] = 0.0, np.nan
    assert compare("x", 0, nan, moved, 1e-5, 1e-4, nonfinite=allowed).verdict == "nonfinite"
    finite_off = nan.copy()
    finite_off[1, 1] = 0.5
    off = compare("x", 0, nan, finite_off, 1e-5, 1e-4, nonfinite=allowed)
    assert off.verdict == "fail" and off.worst_index == [1, 1] and off.max_abs == 0.5
    inf = np.zeros((2, 3), dtype=np.float32)
    inf[1, 0] = -np.inf
    assert compare("x", 0, inf, inf.copy(), 1e-5, 1e-4, nonfinite=allowed).verdict == "nonfinite"
    signed = inf.copy()
    signed[1, 0] = np.inf
    both = NonfiniteAllowance(values=["inf", "-inf"], reason="an additive attention mask holds -inf by design")
    assert compare("x", 0, inf, inf.copy(), 1e-5, 1e-4, nonfinite=both).verdict == "pass"
    assert compare("x", 0, inf, signed, 1e-5, 1e-4, nonfinite=both).verdict == "nonfinite"


def test_first_divergence_follows_execution_order_and_marks_downstream():
    ok = np.ones(3, dtype=np.float32)
    bad = ok + 1
    results = [compare("c", 2, ok, bad, 1e-5, 0), compare("a", 0, ok, ok, 1e-5, 0), compare("b", 1, ok, bad, 1e-5, 0)]
    assert mark_first_divergence(results) == "b"
    assert [(r.name, r.downstream) for r in results] == [("a", False), ("b", False), ("c", True)]


def test_metrics_over_several_chunks_equal_the_whole_array_computation():
    """A capture three chunks long: the worst element in a later chunk (a tie resolved to its first occurrence) and a
    declared NaN pair in the last chunk give the metrics a one-shot float64 computation gives; undeclared, the NaN
    pair is the 'nonfinite' verdict, found in whichever chunk it sits."""
    from parity.contracts.metrics import CHUNK
    from parity.contracts.recipe import NonfiniteAllowance

    rng = np.random.default_rng(1)
    size = 2 * CHUNK + 123
    origin = rng.normal(size=size).astype(np.float32)
    port = origin + rng.normal(scale=1e-7, size=size).astype(np.float32)
    for i in (CHUNK + 5, 2 * CHUNK + 7):
        origin[i], port[i] = 1.0, 1.5
    origin[-3] = port[-3] = np.nan
    assert compare("x", 0, origin, port, 0.1, 0.0).verdict == "nonfinite"
    declared = NonfiniteAllowance(values=["nan"], reason="a NaN the original writes into padding, by design")
    r = compare("x", 0, origin, port, 0.1, 0.0, nonfinite=declared)
    assert r.verdict == "fail" and r.worst_index == [CHUNK + 5] and r.max_abs == 0.5
    assert r.mismatch_fraction == 2 / size and (r.nonfinite_origin, r.nonfinite_port) == (1, 1)
    o = np.nan_to_num(origin.astype(np.float64))
    p = np.nan_to_num(port.astype(np.float64))
    diff = np.abs(p - o)
    assert abs(r.mean_abs - diff.mean()) <= 1e-12 * diff.mean()
    assert abs(r.rms - np.sqrt(np.mean(diff**2))) <= 1e-12 * r.rms
    assert abs(r.cosine - np.dot(o, p) / np.sqrt(np.dot(o, o) * np.dot(p, p))) <= 1e-12
    assert r.atol_needed == 0.5 and abs(r.rtol_needed - 0.4) < 1e-12
