"""ParityReport and its parts: what one comparison found, written as report.json (every other format renders it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from parity.contracts.base import SCHEMA_VERSION, Sha256, Strict
from parity.contracts.conversion import ConversionRecord
from parity.contracts.manifests import EnvironmentRecord
from parity.contracts.mutations import Mutation
from parity.contracts.recipe import NonfiniteValue

CaptureVerdict = Literal["pass", "fail", "shape-mismatch", "dtype-mismatch", "nonfinite", "missing"]
Verdict = Literal["pass", "fail", "error"]
NonfiniteWhere = Literal["weight", "input", "reference", "port", "processor-original", "processor-port"]


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
    nonfinite_reason: str | None = None
    """Written reason of the recipe's declaration that allowed NaN/Inf here (then they must sit at the same
    positions on both sides and only the finite elements are compared)."""
    note: str | None = None
    """Free text (e.g. why a capture is missing)."""


class Heatmap(Strict):
    capture: str
    """Capture whose difference is shown (the worst one by needed atol)."""
    shape: list[int]
    """Shape of the 2-D grid below (rows, cols)."""
    source_shape: list[int]
    """Shape of the capture; the grid is the max |diff| over blocks of its last two axes (leading axes folded)."""
    values: list[list[float | None]]
    """Block maxima of |port - origin|; null for a block holding a NaN/Inf difference."""


class NonfiniteFinding(Strict):
    """NaN/Inf found somewhere in a comparison: named in every report format, and a failure unless declared."""

    where: NonfiniteWhere
    """weight: the original state dict (or the loaded port's weights); input / reference: the dump; port: the port's
    capture; processor-original / processor-port: a preprocessing check."""
    name: str
    """Tensor name (state-dict key, capture or check name)."""
    count: int = Field(ge=1)
    """Non-finite elements."""
    declared: str | None = None
    """Reason of the recipe's declaration allowing it (None: undeclared, so the run fails)."""


class ToleranceWidening(Strict):
    """A capture the dump's own recipe judges more loosely than the registry's recipe of the same id."""

    name: str
    """Capture, processor check or state-dict key."""
    dump_atol: float
    """atol from the dump's recipe (what the verdict used)."""
    dump_rtol: float
    """rtol from the dump's recipe (what the verdict used)."""
    registry_atol: float
    """atol the registry's recipe would apply."""
    registry_rtol: float
    """rtol the registry's recipe would apply."""
    nonfinite_only_in_dump: list[NonfiniteValue] = Field(default_factory=list)
    """Non-finite values the dump's recipe allows here and the registry's does not."""
    dump_reason: str | None = None
    """The dump recipe's written reason for the looser tolerance."""
    verdict_under_registry: CaptureVerdict | None = None
    """The capture's verdict under the registry's tolerance (None when it is not a compared capture)."""


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
    nonfinite: list[NonfiniteFinding] = Field(default_factory=list)
    """Every NaN/Inf found (weights, dump tensors, port captures, processor checks); undeclared ones fail the run."""
    registry_recipe_hash: Sha256 | None = None
    """Hash of the registry's recipe with the same id, when the registry knows the id (None: a recipe from elsewhere,
    or no registry was consulted)."""
    tolerance_widened: list[ToleranceWidening] = Field(default_factory=list)
    """Where the dump's recipe is looser than the registry's recipe of the same id (a dump cannot quietly widen its
    own tolerance: shown at the top of every report format)."""
    durations: dict[str, float] = Field(default_factory=dict)
    """Seconds per step."""
    error: str | None = None
    """One-line error when verdict is 'error'."""

    def undeclared_nonfinite(self) -> list[NonfiniteFinding]:
        return [f for f in self.nonfinite if f.declared is None]

    @model_validator(mode="after")
    def _verdict_is_consistent(self) -> ParityReport:
        if (self.verdict == "error") != (self.error is not None):
            raise ValueError("an 'error' verdict needs an error message, and only it may carry one")
        if self.verdict == "pass" and (self.first_divergence is not None or self.undeclared_nonfinite()):
            raise ValueError("a passing report cannot name a first divergence or undeclared NaN/Inf")
        if self.verdict == "fail" and self.first_divergence is None and not self.undeclared_nonfinite():
            raise ValueError("a failing report names its first divergence or undeclared NaN/Inf")
        return self
