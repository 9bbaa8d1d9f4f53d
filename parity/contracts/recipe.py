"""Recipe: everything that defines one variant's comparison, as data. A recipe is also a file (JSON or YAML)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import pkgutil
from typing import Annotated, Any, Literal, Union

from pydantic import Field, create_model, model_validator

from parity.contracts.base import Sha256, Strict
from parity.contracts.familyspec import FamilySpec

TolerancePreset = Literal["fp32-cpu", "fp32-cuda", "bf16", "fp16"]

TOLERANCE_PRESETS: dict[str, tuple[float, float]] = {
    "fp32-cpu": (1e-5, 1e-4),
    "fp32-cuda": (1e-4, 1e-3),
    "bf16": (3e-2, 3e-2),
    "fp16": (5e-3, 5e-3),
}
"""Default (atol, rtol) per profile. fp32-cuda assumes TF32 off; bf16/fp16 cover one rounding step per layer."""


class GenerateSpec(Strict):
    seed: int
    """Seed for re-drawing every parameter and float buffer of the original model."""


class CheckpointSource(Strict):
    kind: Literal["url", "generate", "fixture", "file"]
    """Where the original checkpoint comes from: a published URL, the original code from a seed, a golden fixture, or
    your own file (kind=file: given at run time with --checkpoint; `filename` is an optional default path)."""
    url: str | None = None
    """Download location of a published checkpoint (kind=url)."""
    mirrors: list[str] = Field(default_factory=list)
    """Further download locations with the same file, tried in order after `url` (kind=url, needs sha256)."""
    sha256: Sha256 | None = None
    """Expected sha256 of the checkpoint file; required unless trust is trust-on-first-use."""
    trust: Literal["pinned", "trust-on-first-use"] = "pinned"
    """pinned: the file must match sha256. trust-on-first-use: the first download's hash is recorded and enforced."""
    container: str
    """The original container format, e.g. 'torch-state-dict' (plain torch.save of a state dict)."""
    filename: str | None = None
    """File name of the checkpoint as published, inside the fixture folder, or (kind=file) its default path."""
    generate: GenerateSpec | None = None
    """Seeded generation by the original code (kind=generate)."""
    fixture: str | None = None
    """Folder name under the shared fixtures directory (kind=fixture)."""

    @model_validator(mode="after")
    def _consistent(self) -> CheckpointSource:
        if self.kind == "url":
            if not self.url:
                raise ValueError("kind=url needs url")
            if self.trust == "pinned" and not self.sha256:
                raise ValueError("a pinned url checkpoint needs sha256 (or trust='trust-on-first-use')")
        if self.mirrors and not (self.kind == "url" and self.sha256):
            raise ValueError("mirrors need kind=url and a sha256 (a mirror is trusted only for a pinned file)")
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


class InputSpec(Strict):
    images: list[ImageSpec]
    """Raw images the original preprocessing runs on (family-specific inputs live in Recipe.spec)."""


class ToleranceOverride(Strict):
    atol: float = Field(ge=0)
    """Absolute tolerance for the captures this override matches."""
    rtol: float = Field(ge=0)
    """Relative tolerance for the captures this override matches."""
    reason: str = Field(min_length=20)
    """Why the original and the port legitimately differ here, with the measured number."""


NonfiniteValue = Literal["nan", "inf", "-inf"]


class NonfiniteAllowance(Strict):
    """NaN/Inf are a failure wherever they appear; only this declaration lets matching names hold them."""

    values: list[NonfiniteValue] = Field(min_length=1)
    """Which non-finite values are expected (each must then sit at the same positions on both sides)."""
    reason: str = Field(min_length=20)
    """Why the original legitimately produces or holds these values here (e.g. a -inf attention mask buffer)."""


class TolerancePolicy(Strict):
    profile: TolerancePreset = "fp32-cpu"
    """Preset giving the default atol/rtol."""
    atol: float | None = Field(default=None, ge=0)
    """Recipe-wide atol replacing the preset's."""
    rtol: float | None = Field(default=None, ge=0)
    """Recipe-wide rtol replacing the preset's."""
    overrides: dict[str, ToleranceOverride] = Field(default_factory=dict)
    """Per-capture overrides keyed by an fnmatch pattern over capture names; each needs a written reason."""
    nonfinite: dict[str, NonfiniteAllowance] = Field(default_factory=dict, exclude_if=lambda v: not v)
    """NaN/Inf allowed where an fnmatch pattern matches a capture name, a processor check or an original state-dict
    key; each needs a written reason. Without one, any NaN/Inf fails the run (left out of the recipe hash when
    empty, so recipes without declarations keep their hash)."""


class HFSpec(Strict):
    model_class: str
    """transformers class the port is loaded into (e.g. SamModel)."""
    processor_class: str | None = None
    """transformers processor saved beside the model (e.g. SamProcessor)."""
    config_overrides: dict[str, Any] = Field(default_factory=dict)
    """Values forced into the HF config on top of what the converter derives from the original config."""
    pipeline_tag: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9-]*$")
    """The Hub's task tag for the port (e.g. mask-generation, image-segmentation), for the published model card."""


def _family_specs() -> tuple[type[FamilySpec], ...]:
    """Each family's own recipe section: `parity/families/<name>/spec.py:SPEC`, or an empty one when it has none."""
    import parity.families

    specs = []
    for info in sorted(pkgutil.iter_modules(parity.families.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        if importlib.util.find_spec(f"parity.families.{info.name}.spec") is not None:
            spec = importlib.import_module(f"parity.families.{info.name}.spec").SPEC
        else:
            spec = create_model(f"{info.name.title().replace('_', '')}Spec", __base__=FamilySpec,
                                __doc__=f"The {info.name} family has no settings of its own.",
                                family=(Literal[info.name], Field(default=info.name,
                                                                  description="This section is the family's.")))
        specs.append(spec)
    return tuple(specs)


FAMILY_SPECS = _family_specs()
AnyFamilySpec = Annotated[Union[FAMILY_SPECS], Field(discriminator="family")]  # noqa: UP007 (a runtime tuple)


class Recipe(Strict):
    """Everything that defines one variant's comparison; its hash keys dumps and caches."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    """Variant id, following the published HF names (sam-vit-base) or '<family>-tiny-*' for offline variants."""
    family: str
    """Family package under parity/families/ that implements both halves."""
    origin: str
    """Origin environment (a folder under images/) that runs the original code."""
    description: str
    """One line for `parity list`."""
    tiny: bool = False
    """Offline variant whose checkpoint the original code generates; what tests and the demo run."""
    hub_id: str | None = None
    """Where the published port lives on the Hugging Face hub, for re-verification."""
    license: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    """License of the original checkpoint as a Hub license id (e.g. apache-2.0, cc-by-nc-4.0); the published card
    carries it. None when the original project states none for its weights."""
    checkpoint: CheckpointSource
    """Where the original checkpoint comes from."""
    original_config: dict[str, Any]
    """The original implementation's constructor arguments, as data."""
    hf: HFSpec
    """The port's classes and config overrides."""
    inputs: InputSpec
    """Raw inputs the original preprocessing runs on."""
    spec: AnyFamilySpec
    """The family's own section (e.g. SAM prompt cases, CLIPSeg texts); defaults to an empty one."""
    tolerance: TolerancePolicy = Field(default_factory=TolerancePolicy)
    """How close the port must be."""

    @model_validator(mode="before")
    @classmethod
    def _default_spec(cls, data: Any) -> Any:
        if isinstance(data, dict) and "spec" not in data and isinstance(data.get("family"), str):
            return {**data, "spec": {"family": data["family"]}}
        return data

    @model_validator(mode="after")
    def _spec_matches_family(self) -> Recipe:
        if self.spec.family != self.family:
            raise ValueError(f"spec is for family {self.spec.family!r} but the recipe's family is {self.family!r}")
        self.spec.check_original_config(self.original_config)
        return self

    def differs_in_computation(self, other: Recipe) -> str | None:
        """The first field that makes `other` describe another original computation than this recipe (what a dump
        made with one recipe can be judged with the other), or None."""
        for field in ("family", "original_config", "inputs", "spec"):
            ours, theirs = getattr(self, field), getattr(other, field)
            if field != "family" and not isinstance(ours, dict):
                ours, theirs = ours.model_dump(mode="json"), theirs.model_dump(mode="json")
            if ours != theirs:
                return field
        return None

    def recipe_hash(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
