"""The schemas `parity schema` exports (JSON Schema, field docstrings as descriptions)."""

from __future__ import annotations

from pydantic import BaseModel

from parity.contracts.conversion import ConversionRecord
from parity.contracts.manifests import DumpManifest
from parity.contracts.recipe import Recipe
from parity.contracts.report import ParityReport

SCHEMAS: dict[str, type[BaseModel]] = {
    "recipe": Recipe,
    "dump-manifest": DumpManifest,
    "conversion-record": ConversionRecord,
    "parity-report": ParityReport,
}
