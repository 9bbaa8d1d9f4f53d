"""The one import shim of the UperNet origins: a stand-in `mmcv.ops` for mmcv builds without compiled ops.

mmsegmentation imports four `mmcv.ops` symbols at module level, in code UperNet-ConvNeXt never runs:
`sigmoid_focal_loss` (losses/focal_loss.py, FocalLoss), `point_sample` (PointHead; in 1.x also san_head, mask
classification utils), `CrissCrossAttention` (CCHead) and `PSAMask` (PSAHead). mmcv 1.7.2 built with
MMCV_WITH_OPS=0 (mmseg0) and mmcv-lite 2.1.0 (mmseg1) ship `mmcv/ops/*.py` but no compiled `mmcv._ext`, so
`import mmcv.ops` fails and with it `import mmseg.models`.

`install()` is a no-op when the real `mmcv.ops` imports. Otherwise it registers a module holding exactly those four
names; each one records the call in `CALLS` and raises `ShimCalled`. The origin checks `CALLS` is empty after every
dump and generation, and tests/test_upernet.py proves it. See docs/upernet.md.
"""

from __future__ import annotations

import sys
import types

NAMES = ("sigmoid_focal_loss", "point_sample", "CrissCrossAttention", "PSAMask")
CALLS: list[str] = []
STATE = {"installed": False, "real_ops": False}


class ShimCalled(RuntimeError):
    """A compiled mmcv op was needed: this origin env cannot run that code (UperNet-ConvNeXt never does)."""


def _stub(name: str):
    def stub(*_args, **_kwargs):
        CALLS.append(name)
        raise ShimCalled(f"mmcv.ops.{name} is an import shim (mmcv built without compiled ops); it must never run")

    stub.__name__ = name
    stub.__qualname__ = name
    stub.__module__ = "mmcv.ops"
    return stub


def install() -> str:
    """Make `import mmseg.models` work; returns a one-line description for the dump's environment record."""
    if STATE["installed"] or STATE["real_ops"]:
        return describe()
    try:
        import mmcv.ops

        STATE["real_ops"] = True
        return describe()
    except ImportError:
        pass
    for key in [k for k in sys.modules if k == "mmcv.ops" or k.startswith("mmcv.ops.")]:
        del sys.modules[key]
    import mmcv

    module = types.ModuleType("mmcv.ops", __doc__)
    module.__parity_shim__ = True
    for name in NAMES:
        setattr(module, name, _stub(name))
    sys.modules["mmcv.ops"] = module
    mmcv.ops = module
    STATE["installed"] = True
    return describe()


def describe() -> str:
    if STATE["real_ops"]:
        return "mmcv.ops: real compiled ops"
    if STATE["installed"]:
        return f"mmcv.ops: parity import shim ({', '.join(NAMES)}; raise if called), calls so far: {len(CALLS)}"
    return "mmcv.ops: not imported"


def assert_unused(what: str) -> None:
    if CALLS:
        from parity.contracts.errors import ParityError

        raise ParityError(f"{what} called the mmcv.ops import shim ({', '.join(CALLS)}): the origin needs real ops")
