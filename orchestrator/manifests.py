"""The contracts between the host, the origin environments and the port environment.

Every file that crosses an environment boundary is one of these models, serialised as JSON. They import only pydantic
so that the origin side (no transformers) and the port side (no origin packages) can both validate them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.errors import ParityError

SCHEMA_VERSION = 1

Sha256 = str
TolerancePreset = Literal["fp32-cpu", "fp32-cuda", "bf16", "fp16"]

TOLERANCE_PRESETS: dict[str, tuple[float, float]] = {
    "fp32-cpu": (1e-5, 1e-4),
    "fp32-cuda": (1e-4, 1e-3),
    "bf16": (3e-2, 3e-2),
    "fp16": (5e-3, 5e-3),
}
"""Default (atol, rtol) per profile. fp32-cuda assumes TF32 off; bf16/fp16 cover one rounding step per layer."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _is_sha256(value: str | None) -> str | None:
    if value is not None and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
        raise ValueError(f"not a lowercase hex sha256: {value!r}")
    return value


class GenerateSpec(Strict):
    seed: int
    """Seed for re-drawing every parameter and float buffer of the original model."""


class CheckpointSource(Strict):
    kind: Literal["url", "generate", "fixture"]
    """Where the original checkpoint comes from: a published URL, the original code from a seed, or a golden fixture."""
    url: str | None = None
    """Download location of a published checkpoint (kind=url)."""
    sha256: Sha256 | None = None
    """Expected sha256 of the checkpoint file; required unless trust is trust-on-first-use."""
    trust: Literal["pinned", "trust-on-first-use"] = "pinned"
    """pinned: the file must match sha256. trust-on-first-use: the first download's hash is recorded and enforced."""
    container: str
    """The original container format, e.g. 'torch-state-dict' (plain torch.save of a state dict)."""
    filename: str | None = None
    """File name of the checkpoint as published (or inside the fixture folder)."""
    generate: GenerateSpec | None = None
    """Seeded generation by the original code (kind=generate)."""
    fixture: str | None = None
    """Folder name under the shared fixtures directory (kind=fixture)."""

    _check_sha = field_validator("sha256")(classmethod(lambda cls, v: _is_sha256(v)))

    @model_validator(mode="after")
    def _consistent(self) -> CheckpointSource:
        if self.kind == "url":
            if not self.url:
                raise ValueError("kind=url needs url")
            if self.trust == "pinned" and not self.sha256:
                raise ValueError("a pinned url checkpoint needs sha256 (or trust='trust-on-first-use')")
        if self.kind == "generate" and self.generate is None:
            raise ValueError("kind=generate needs generate: {seed}")
        if self.kind == "fixture" and not (self.fixture and self.filename):
            raise ValueError("kind=fixture needs fixture and filename")
        return self


class ImageSpec(Strict):
    kind: Literal["synthetic", "fixture-file"]
    """synthetic: a deterministic pattern drawn from a seed; fixture-file: a PNG from a fixture folder."""
    name: str = "image"
    """Key of the raw image in the dump (also the PNG's stem)."""
    seed: int | None = None
    """Seed of the synthetic pattern."""
    height: int | None = Field(default=None, gt=0)
    """Height of the synthetic image in pixels."""
    width: int | None = Field(default=None, gt=0)
    """Width of the synthetic image in pixels."""
    fixture: str | None = None
    """Fixture folder of a fixture-file image."""
    filename: str | None = None
    """File name of a fixture-file image."""

    @model_validator(mode="after")
    def _consistent(self) -> ImageSpec:
        if self.kind == "synthetic" and None in (self.seed, self.height, self.width):
            raise ValueError("a synthetic image needs seed, height and width")
        if self.kind == "fixture-file" and not (self.fixture and self.filename):
            raise ValueError("a fixture-file image needs fixture and filename")
        return self


class PromptCase(Strict):
    """One call of the model with one set of prompts, in the ORIGINAL image frame (before any resizing)."""

    point_coords: list[list[list[float]]] | None = None
    """Points (x, y) in pixels of the raw image, shape (prompts, points, 2)."""
    point_labels: list[list[int]] | None = None
    """1 foreground, 0 background; shape (prompts, points)."""
    boxes: list[list[float]] | None = None
    """Boxes (x0, y0, x1, y1) in pixels of the raw image, shape (prompts, 4)."""
    mask_from: str | None = None
    """Feed back the low-res logits of an earlier case as a mask prompt."""
    mask_index: int | None = None
    """Which multimask output of mask_from to feed back; None picks the highest predicted IoU."""

    @model_validator(mode="after")
    def _consistent(self) -> PromptCase:
        if (self.point_coords is None) != (self.point_labels is None):
            raise ValueError("point_coords and point_labels go together")
        if self.point_coords is None and self.boxes is None:
            raise ValueError("a prompt case needs points or a box")
        if self.point_coords is not None:
            shape = [[len(p) for p in prompt] for prompt in self.point_coords]
            if any(n != 2 for prompt in shape for n in prompt):
                raise ValueError("every point is (x, y)")
            if [len(p) for p in self.point_labels or []] != [len(p) for p in self.point_coords]:
                raise ValueError("point_labels must match point_coords point for point")
        if self.boxes is not None and any(len(b) != 4 for b in self.boxes):
            raise ValueError("every box is (x0, y0, x1, y1)")
        if self.mask_index is not None and self.mask_from is None:
            raise ValueError("mask_index needs mask_from")
        return self


class InputSpec(Strict):
    images: list[ImageSpec]
    """Raw images the original preprocessing runs on."""
    prompts: dict[str, PromptCase] = Field(default_factory=dict)
    """Named prompt cases (SAM); each is one forward of the original model."""
    texts: list[str] = Field(default_factory=list)
    """Text prompts (text-conditioned families)."""

    @model_validator(mode="after")
    def _mask_sources_exist(self) -> InputSpec:
        names = list(self.prompts)
        for i, (name, case) in enumerate(self.prompts.items()):
            if case.mask_from is not None and case.mask_from not in names[:i]:
                raise ValueError(f"prompt case {name!r}: mask_from {case.mask_from!r} is not an earlier case")
        return self


class ToleranceOverride(Strict):
    atol: float = Field(ge=0)
    """Absolute tolerance for the captures this override matches."""
    rtol: float = Field(ge=0)
    """Relative tolerance for the captures this override matches."""
    reason: str = Field(min_length=20)
    """Why the original and the port legitimately differ here, with the measured number."""


class TolerancePolicy(Strict):
    profile: TolerancePreset = "fp32-cpu"
    """Preset giving the default atol/rtol."""
    atol: float | None = Field(default=None, ge=0)
    """Recipe-wide atol replacing the preset's."""
    rtol: float | None = Field(default=None, ge=0)
    """Recipe-wide rtol replacing the preset's."""
    overrides: dict[str, ToleranceOverride] = Field(default_factory=dict)
    """Per-capture overrides keyed by an fnmatch pattern over capture names; each needs a written reason."""

    def defaults(self) -> tuple[float, float]:
        atol, rtol = TOLERANCE_PRESETS[self.profile]
        return (self.atol if self.atol is not None else atol, self.rtol if self.rtol is not None else rtol)


class HFSpec(Strict):
    model_class: str
    """transformers class the port is loaded into (e.g. SamModel)."""
    processor_class: str | None = None
    """transformers processor saved beside the model (e.g. SamProcessor)."""
    config_overrides: dict[str, Any] = Field(default_factory=dict)
    """Values forced into the HF config on top of what the converter derives from the original config."""


class Recipe(Strict):
    """Everything that defines one variant's comparison; its hash keys dumps and caches."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    """Variant id, following the published HF names (sam-vit-base) or '<family>-tiny-*' for offline variants."""
    family: str
    """Converter package under converters/ that implements both halves."""
    origin: str
    """Origin environment (a folder under images/) that runs the original code."""
    description: str
    """One line for `parity list`."""
    tiny: bool = False
    """Offline variant whose checkpoint the original code generates; what tests and the demo run."""
    hub_id: str | None = None
    """Where the published port lives on the Hugging Face hub, for re-verification."""
    checkpoint: CheckpointSource
    """Where the original checkpoint comes from."""
    original_config: dict[str, Any]
    """The original implementation's constructor arguments, as data."""
    hf: HFSpec
    """The port's classes and config overrides."""
    inputs: InputSpec
    """Raw inputs the original preprocessing runs on."""
    tolerance: TolerancePolicy = Field(default_factory=TolerancePolicy)
    """How close the port must be."""

    def recipe_hash(self) -> Sha256:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class TensorEntry(Strict):
    name: str
    """Key in the safetensors file."""
    shape: list[int]
    """Tensor shape."""
    dtype: str
    """safetensors dtype name (F32, I64, U8, ...)."""
    sha256: Sha256
    """sha256 of the tensor's raw little-endian bytes: two dumps agree bit for bit iff these agree."""
    module: str | None = None
    """Original module path (forward hook) or return value this came from."""
    execution_index: int | None = None
    """Order in which the original computed it; the first divergence is found along this order."""
    layout: str | None = None
    """Axis meaning, e.g. 'NHWC' or '(B, tokens, C)'."""
    meaning: str | None = None
    """What the tensor is, for a reader of the report."""


class FileEntry(Strict):
    name: str
    """File name inside the dump folder."""
    sha256: Sha256
    """sha256 of the file's bytes."""
    bytes: int = Field(ge=0)
    """File size."""


class CheckpointRecord(Strict):
    source: str
    """Where it came from (url, generated seed, fixture path, or user path)."""
    sha256: Sha256
    """sha256 of the checkpoint file that was loaded."""
    bytes: int
    """Checkpoint size."""
    container: str
    """Container format, as in the recipe."""
    n_tensors: int
    """Tensors in the original state dict after the original loader ran."""


class EnvironmentRecord(Strict):
    python: str
    """Python version."""
    platform: str
    """platform.platform()."""
    torch: str | None = None
    """torch version."""
    cuda: str | None = None
    """CUDA version torch was built with (None for CPU builds)."""
    device: str
    """Device the forward ran on."""
    packages: dict[str, str] = Field(default_factory=dict)
    """Versions of the packages that define the result."""
    upstream: str | None = None
    """Upstream source of the original code (package==version or repo@commit)."""


class DeterminismRecord(Strict):
    deterministic_algorithms: bool
    """torch.use_deterministic_algorithms was on."""
    num_threads: int
    """torch intra-op threads."""
    tf32: bool
    """TF32 matmuls allowed (always False for parity runs)."""
    dtype: str
    """Compute dtype of the forward."""


class DumpManifest(Strict):
    """What an origin environment wrote: enough to diff the dump anywhere, with no access to the origin."""

    schema_version: Literal[1] = SCHEMA_VERSION
    """Manifest format version."""
    recipe: Recipe
    """The recipe this dump was made from (self-contained: a dump can be diffed without the registry)."""
    recipe_hash: Sha256
    """Recipe.recipe_hash() at dump time."""
    producer: Literal["origin", "fixture"]
    """origin: written by parity's origin side; fixture: imported from a golden fixture made by upstream code."""
    checkpoint: CheckpointRecord
    """The checkpoint that was loaded."""
    environment: EnvironmentRecord
    """Where the original ran."""
    determinism: DeterminismRecord
    """Determinism settings of the forward."""
    state_dict: FileEntry
    """The original state dict re-exported as safetensors (what the port side converts)."""
    raw_inputs: list[FileEntry]
    """Raw input files (images) in the dump folder."""
    inputs: list[TensorEntry]
    """Tensors fed to the original model (after the original preprocessing)."""
    references: list[TensorEntry]
    """Activations of the original, in execution order."""
    modules: list[TensorEntry] = Field(default_factory=list)
    """With --all-modules: the first output of every original module (modules.safetensors), keyed by module path."""

    @model_validator(mode="after")
    def _hash_and_order(self) -> DumpManifest:
        if self.recipe.recipe_hash() != self.recipe_hash:
            raise ValueError("recipe_hash does not match the embedded recipe")
        indices = [r.execution_index for r in self.references]
        if any(i is None for i in indices) or indices != sorted(indices) or len(set(indices)) != len(indices):
            raise ValueError("references must carry strictly increasing execution_index values")
        return self


class KeyMapping(Strict):
    op: Literal["rename", "copy", "split", "merge", "transpose", "drop"]
    """What happened to the source key(s)."""
    rule: str
    """Name of the declared rule that matched."""
    sources: list[str]
    """Original key(s)."""
    targets: list[str]
    """Port key(s); empty for drop."""


class ConversionRecord(Strict):
    """Strict weight accounting: every original key went somewhere by a declared rule, every port key was filled."""

    recipe_id: str
    """Variant converted."""
    source_keys: int
    """Tensors in the original state dict."""
    target_keys: int
    """Tensors the port model expects (in-memory names)."""
    mappings: list[KeyMapping]
    """One entry per source key group."""
    missing: list[str] = Field(default_factory=list)
    """Port keys nothing was written to (an error)."""
    unused: list[str] = Field(default_factory=list)
    """Original keys no rule claimed (an error)."""
    shape_errors: list[str] = Field(default_factory=list)
    """Keys whose converted shape differs from the port's (an error)."""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unused or self.shape_errors)


CaptureVerdict = Literal["pass", "fail", "shape-mismatch", "dtype-mismatch", "nonfinite", "missing"]


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
    mutation: dict[str, Any]
    """The corruption applied to the converted weights."""
    verdict: Literal["pass", "fail", "error"]
    """What parity concluded about the corrupted port (pass means the mutation went unnoticed)."""
    first_divergence: str | None = None
    """First capture that failed."""
    error: str | None = None
    """Error instead of a diff (e.g. strict accounting caught a dropped key)."""


class ProcessorResult(Strict):
    processor: str
    """Processor class that ran (and whether fast or slow)."""
    verdict: Literal["pass", "fail", "error"]
    """Preprocessing parity, separate from the model verdict."""
    checks: list[CaptureResult]
    """Compared tensors (pixel values, normalised prompts)."""
    note: str | None = None
    """What differs and why, when it does."""


class ParityReport(Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    """Report format version."""
    variant: str
    """Recipe id."""
    recipe_hash: Sha256
    """Hash of the recipe the dump was made from."""
    dump: str
    """Dump folder compared against."""
    dump_producer: Literal["origin", "fixture"]
    """Who produced the references."""
    port: str
    """What was compared: 'converted' or the path / hub id of an existing port."""
    verdict: Literal["pass", "fail", "error"]
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


SCHEMAS: dict[str, type[BaseModel]] = {
    "recipe": Recipe,
    "dump-manifest": DumpManifest,
    "conversion-record": ConversionRecord,
    "parity-report": ParityReport,
}


def load_model(model: type[BaseModel], path: Path) -> Any:
    """Read and validate a manifest; a bad one is a one-line ParityError naming the file and the first bad field."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ParityError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ParityError(f"{path}: invalid {model.__name__}: field '{where}': {err['msg']}") from None


def write_model(obj: BaseModel, path: Path) -> None:
    """Write a manifest atomically (temp file + rename), so a reader never sees half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(obj.model_dump_json(indent=2) + "\n")
    tmp.replace(path)
