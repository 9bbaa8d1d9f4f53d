"""ParityReport and its parts: what one comparison found, written as report.json (every other format renders it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from parity.contracts.base import SCHEMA_VERSION, Sha256, Strict
from parity.contracts.conversion import ConversionRecord
from parity.contracts.manifests import EnvironmentRecord
from parity.contracts.mutations import Mutation

CaptureVerdict = Literal["pass", "fail", "shape-mismatch", "dtype-mismatch", "nonfinite", "missing"]
Verdict = Literal["pass", "fail", "error"]


class CaptureResult(Strict):
    name: str
    """Capture name on the origin side (original module path or return value)."""
    port_name: str | None
    """What the port side captured for it."""
    execution_index: int
    """Origin execution order."""
    origin_shape: list[int]
    """Shape of the reference."""
    port_shape: list[int] | None
    """Shape of the port's tensor after its layout adapter."""
    verdict: CaptureVerdict
    """This pair's own verdict."""
    downstream: bool = False
    """Fails after the first divergence (likely a consequence of it)."""
    atol: float
    """Absolute tolerance applied."""
    rtol: float
    """Relative tolerance applied."""
    tolerance_reason: str | None = None
    """Written reason when an override applied."""
    max_abs: float | None = None
    """max |port - origin|."""
    max_rel: float | None = None
    """max |port - origin| / |origin| over elements where origin is non-zero."""
    mean_abs: float | None = None
    """mean |port - origin|."""
    rms: float | None = None
    """root mean square of the difference."""
    cosine: float | None = None
    """cosine similarity of the flattened tensors."""
    mismatch_fraction: float | None = None
    """Fraction of elements outside atol + rtol * |origin|."""
    worst_index: list[int] | None = None
    """Index of the element with the largest tolerance excess."""
    atol_needed: float | None = None
    """Smallest atol that passes at the applied rtol."""
    rtol_needed: float | None = None
    """Smallest rtol that passes at the applied atol (inf if no rtol can)."""
    nonfinite_origin: int = 0
    """NaN/Inf count in the reference."""
    nonfinite_port: int = 0
    """NaN/Inf count in the port tensor."""
    note: str | None = None
    """Free text (e.g. why a capture is missing)."""


class Heatmap(Strict):
    capture: str
    """Capture whose difference is shown (the worst one by needed atol)."""
    shape: list[int]
    """Shape of the 2-D grid below (rows, cols)."""
    source_shape: list[int]
    """Shape of the capture; the grid is the max |diff| over blocks of its last two axes (leading axes folded)."""
    values: list[list[float]]
    """Block maxima of |port - origin|."""


class MutationResult(Strict):
    mutation: Mutation
    """The corruption applied to the converted weights."""
    verdict: Verdict
    """What parity concluded about the corrupted port (pass means the mutation went unnoticed)."""
    first_divergence: str | None = None
    """First capture that failed."""
    error: str | None = None
    """Error instead of a diff (e.g. strict accounting caught a dropped key)."""


class ProcessorResult(Strict):
    processor: str
    """Processor class that ran (and whether fast or slow)."""
    verdict: Verdict
    """Preprocessing parity, separate from the model verdict."""
    checks: list[CaptureResult]
    """Compared tensors (pixel values, normalised prompts)."""
    note: str | None = None
    """What differs and why, when it does."""


class ParityReport(Strict):
    schema_version: Literal[2] = SCHEMA_VERSION
    """Report format version."""
    recipe_id: str
    """Id of the recipe the dump was made from (the variant)."""
    recipe_hash: Sha256
    """Hash of the recipe the dump was made from."""
    dump: str
    """Dump folder compared against."""
    dump_producer: Literal["origin", "fixture"]
    """Who produced the references."""
    port: str
    """What was compared: 'converted' or the path / hub id of an existing port."""
    device: str = "cpu"
    """Where the port ran."""
    verdict: Verdict
    """Model verdict (processor verdict is separate)."""
    first_divergence: str | None = None
    """First capture in origin execution order that fails."""
    captures: list[CaptureResult] = Field(default_factory=list)
    """Per-capture comparison, in origin execution order."""
    modules: list[CaptureResult] = Field(default_factory=list)
    """--all-modules: every module pair derived from the weight mapping, in origin execution order."""
    module_first_divergence: str | None = None
    """First failing derived module pair (finer-grained than first_divergence)."""
    unpaired: list[str] = Field(default_factory=list)
    """Original modules with an output that no derived pair covers, and port modules likewise."""
    heatmap: Heatmap | None = None
    """Where the worst capture differs, for the HTML report."""
    processor: ProcessorResult | None = None
    """Preprocessing verdict."""
    conversion: ConversionRecord | None = None
    """Weight accounting (absent when re-verifying an existing port)."""
    origin_environment: EnvironmentRecord | None = None
    """Where the references were computed."""
    port_environment: EnvironmentRecord | None = None
    """Where the port ran."""
    checkpoint_sha256: Sha256 | None = None
    """Checkpoint the references came from."""
    durations: dict[str, float] = Field(default_factory=dict)
    """Seconds per step."""
    error: str | None = None
    """One-line error when verdict is 'error'."""

    @model_validator(mode="after")
    def _verdict_is_consistent(self) -> ParityReport:
        if (self.verdict == "error") != (self.error is not None):
            raise ValueError("an 'error' verdict needs an error message, and only it may carry one")
        if self.verdict == "pass" and self.first_divergence is not None:
            raise ValueError("a passing report cannot name a first divergence")
        if self.verdict == "fail" and self.first_divergence is None:
            raise ValueError("a failing report names its first divergence")
        return self
