"""Which implementation the original code actually ran, where it picks one at run time (e.g. a compiled op or a
pure-PyTorch fallback). A family's origin records it during its forward; the dump step writes it into the dump's
environment record (EnvironmentRecord.code_paths)."""

from __future__ import annotations

_RECORDED: dict[str, str] = {}


def record(name: str, description: str) -> None:
    """Say which path `name` took (the last record for a name wins)."""
    _RECORDED[name] = description


def recorded() -> dict[str, str]:
    return dict(sorted(_RECORDED.items()))


def clear() -> None:
    _RECORDED.clear()
