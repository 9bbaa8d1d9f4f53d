"""Base model and field types shared by every schema."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, WithJsonSchema

SCHEMA_VERSION = 2
"""Version of every file format parity writes (dump manifests, reports, step messages)."""


class Strict(BaseModel):
    """Unknown fields are errors, assignments are validated, and field docstrings become schema descriptions."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


def _sha256(value: str) -> str:
    normalised = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", normalised):
        raise ValueError(f"not a sha256 (64 hex digits): {value[:80]!r}")
    return normalised


Sha256 = Annotated[str, AfterValidator(_sha256),
                   WithJsonSchema({"type": "string", "pattern": "^[0-9a-fA-F]{64}$",
                                   "description": "sha256 as 64 hex digits (stored lower case)"})]
"""A sha256 digest: 64 hex digits, case-insensitive on input, lower case once validated."""


def parse_sha256(value: str, what: str) -> str:
    """A user-given sha256 (CLI option), validated like the schema field; a bad one is a one-line ParityError."""
    from parity.contracts.errors import ParityError

    try:
        return _sha256(value)
    except ValueError:
        raise ParityError(f"{what} is not a sha256 (64 hex digits): {value[:80]!r}") from None
