"""The step protocol between the host and the environments: one typed request and one typed response per step.

The host writes a request as JSON, runs `python -m parity.origin REQUEST` or `python -m parity.port REQUEST` in the
step's environment (a venv or a container) and reads the response from the last marker line on stderr. Progress and
errors travel as marker lines too. Each request also says which host paths the step reads and writes and whether it
needs the network, which is all a backend needs to sandbox it; nothing else defines a step's interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter, model_validator

from parity.contracts.base import Sha256, Strict
from parity.contracts.familyspec import DatasetClass
from parity.contracts.mutations import Mutation
from parity.contracts.recipe import Recipe, TolerancePolicy
from parity.contracts.report import MutationResult, Verdict

PROGRESS_MARKER = "parity-progress: "
"""A stderr line starting with this is a progress message."""
ERROR_MARKER = "parity: error: "
"""A stderr line starting with this is the step's one-line error (the process then exits non-zero)."""
RESPONSE_MARKER = "parity-response: "
"""The last stderr line starting with this carries the step's response as JSON."""

Device = Annotated[str, Field(pattern=r"^(cpu|cuda(:\d+)?)$")]


class StepRequest(Strict):
    def side(self) -> Literal["origin", "port"]:
        """Which runtime package serves the step."""
        raise NotImplementedError

    def reads(self) -> list[Path]:
        """Host paths the step only reads (a container mounts them read-only)."""
        raise NotImplementedError

    def writes(self) -> list[Path]:
        """Host folders the step writes into (mounted read-write)."""
        raise NotImplementedError

    def needs_network(self) -> bool:
        return False


class GenerateRequest(StepRequest):
    """Build the ORIGINAL model, re-draw every tensor from the recipe's seed, save its native checkpoint container."""

    step: Literal["generate"] = "generate"
    recipe: Recipe
    """Recipe with checkpoint.kind == 'generate'."""
    out: Path
    """Checkpoint file to write (written to a temp name beside it, renamed when complete)."""

    def side(self):
        return "origin"

    def reads(self):
        return []

    def writes(self):
        return [self.out.parent]


class DumpRequest(StepRequest):
    """Load the original checkpoint with the original code, run the captures, write a dump folder."""

    step: Literal["dump"] = "dump"
    recipe: Recipe
    """What to run."""
    checkpoint: Path
    """Original checkpoint file."""
    checkpoint_source: str
    """Where the checkpoint came from, for the manifest."""
    out: Path
    """Dump folder to write (staged beside it, renamed when complete)."""
    device: Device = "cpu"
    """Where the original runs."""
    threads: int = Field(default=1, ge=1)
    """torch intra-op threads."""
    all_modules: bool = False
    """Also record the first output of every module (modules.safetensors)."""
    fixtures: Path | None = None
    """Golden fixtures folder, when the recipe reads raw images from one."""
    assets: dict[str, Path] = Field(default_factory=dict)
    """Files the original code would download, resolved and hash-checked by the host: one per name in
    `recipe.spec.assets()` (parity.contracts.sources)."""

    @model_validator(mode="after")
    def _assets_match_recipe(self) -> DumpRequest:
        wanted = {source.name for source in self.recipe.spec.assets()}
        if set(self.assets) != wanted:
            raise ValueError(f"assets {sorted(self.assets)} do not match the recipe's {sorted(wanted)}")
        return self

    def side(self):
        return "origin"

    def reads(self):
        extra = [Path(f) for f in self.recipe.spec.local_files()] + list(self.assets.values())
        return [self.checkpoint] + ([self.fixtures] if self.fixtures else []) + extra

    def writes(self):
        return [self.out.parent]


class ImportFixtureRequest(StepRequest):
    """Turn a golden fixture folder (made by upstream code) into a dump."""

    step: Literal["import-fixture"] = "import-fixture"
    recipe: Recipe
    """The recipe that reproduces the fixture."""
    fixture: Path
    """The fixture folder."""
    fixtures: Path
    """The folder holding every fixture (some read a sibling, e.g. CLIPSeg's shared CLIP tower)."""
    out: Path
    """Dump folder to write."""

    def side(self):
        return "origin"

    def reads(self):
        return [self.fixtures] + [Path(f) for f in self.recipe.spec.local_files()]

    def writes(self):
        return [self.out.parent]


class RecipeSource(Strict):
    """What `parity recipe new FAMILY` was given: the ORIGINAL project's own configuration, read by the original
    tooling (in the origin environment where the family needs it), plus what the configuration does not say."""

    family: str
    """Family package under parity/families/."""
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    """Id of the new recipe."""
    description: str | None = None
    """One line for `parity list` (default: made from the configuration)."""
    origin: str
    """Origin environment that reads the configuration and later runs the original (e.g. mmseg0 or mmseg1)."""
    config: Path | None = None
    """The original project's configuration file (an mmseg config .py, a detectron2/Mask2Former .yaml)."""
    config_root: Path | None = None
    """Folder the configuration's includes (_base_ files) resolve within; read-only inside a container (default: the
    configuration file's folder)."""
    checkpoint: Path | None = None
    """An original checkpoint: SAM infers its build arguments from its tensor shapes; every family strict-loads it
    into the original model built from the new recipe, as a check."""
    arguments: dict[str, Any] = Field(default_factory=dict)
    """Build or constructor arguments (`--arg key=value`), family-specific: e.g. SAM's `builder=vit_b`, MSN's
    `patch_size=8`, CLIPSeg's `extract_layers=[3, 7, 9]`, Mask2Former's `dataset=ade20k_panoptic_train`."""
    classes: list[DatasetClass] | None = None
    """Your dataset's classes (names, thing/stuff, dataset ids), replacing what the configuration's dataset says."""

    def folders(self) -> list[Path]:
        """Host paths the configuration step reads."""
        paths = [self.config_root or self.config.parent] if self.config is not None else []
        return paths + ([self.checkpoint] if self.checkpoint is not None else [])


class RecipeRequest(StepRequest):
    """Read the original project's configuration with the original tooling and answer with a complete recipe."""

    step: Literal["recipe"] = "recipe"
    source: RecipeSource
    """What the user gave."""

    def side(self):
        return "origin"

    def reads(self):
        return self.source.folders()

    def writes(self):
        return []


class PortRequest(StepRequest):
    """Convert the dump's state dict (or load an existing port), run the port on the dump's inputs, diff, report."""

    step: Literal["port"] = "port"
    dump: Path
    """Dump folder to compare against."""
    out: Path
    """Folder for report.json, conversion.json and hf/."""
    port: str | None = None
    """An existing port to load instead of converting: a save_pretrained folder or a hub id."""
    device: Device = "cpu"
    """Where the port runs."""
    threads: int = Field(default=1, ge=1)
    """torch intra-op threads."""
    save: bool = True
    """Save the converted model and processor (hf/) when the run reaches a verdict."""
    all_modules: bool = False
    """Also diff every module pair derived from the weight mapping."""
    mutate: Mutation | None = None
    """Report mode with one corruption applied to the converted weights (nothing is saved)."""
    mutations: list[Mutation] = Field(default_factory=list)
    """Self-test mode: one conversion per corruption, each judged alone; the response lists what parity concluded."""
    recipe: Recipe | None = None
    """Port and judge with this recipe instead of the dump's (it must describe the same original computation: family,
    original_config, inputs and spec equal; e.g. other tolerances or HF config overrides)."""
    registry_tolerance: TolerancePolicy | None = None
    """The tolerance policy of the registry's recipe with the dump's recipe id, when the registry knows that id:
    the report names every capture the dump's own recipe judges more loosely."""
    registry_recipe_hash: Sha256 | None = None
    """Hash of that registry recipe (shown beside the dump's own recipe hash)."""

    @model_validator(mode="after")
    def _one_mode(self) -> PortRequest:
        if self.mutations and (self.mutate is not None or self.port is not None):
            raise ValueError("mutations (self-test mode) exclude mutate and port")
        if self.port is not None and self.mutate is not None:
            raise ValueError("a mutation applies to converted weights, not to an existing port")
        return self

    def local_port(self) -> Path | None:
        """The existing port as a local folder, or None for a hub id / a converted port."""
        if self.port is None:
            return None
        path = Path(self.port)
        return path if path.is_absolute() else None

    def side(self):
        return "port"

    def reads(self):
        return [self.dump] + ([self.local_port()] if self.local_port() else [])

    def writes(self):
        return [self.out]

    def needs_network(self):
        return self.port is not None and self.local_port() is None


AnyStepRequest = Annotated[Union[GenerateRequest, DumpRequest, ImportFixtureRequest, RecipeRequest, PortRequest],
                           Field(discriminator="step")]
REQUESTS: TypeAdapter = TypeAdapter(AnyStepRequest)


class GenerateResponse(Strict):
    step: Literal["generate"] = "generate"
    checkpoint: Path
    """The checkpoint written."""
    sha256: Sha256
    """Its sha256."""


class DumpResponse(Strict):
    step: Literal["dump"] = "dump"
    dump: Path
    """The dump folder written."""
    references: int
    """Captures recorded."""


class ImportFixtureResponse(Strict):
    step: Literal["import-fixture"] = "import-fixture"
    dump: Path
    """The dump folder written."""


class RecipeResponse(Strict):
    step: Literal["recipe"] = "recipe"
    recipe: Recipe
    """The complete recipe made from the original's configuration."""
    notes: list[str] = Field(default_factory=list)
    """What the configuration did not say and how the recipe fills it in (shown to the user)."""


class PortResponse(Strict):
    step: Literal["port"] = "port"
    report: Path | None = None
    """report.json written (report mode)."""
    verdict: Verdict | None = None
    """The report's verdict (report mode)."""
    mutations: list[MutationResult] = Field(default_factory=list)
    """What parity concluded for each corruption (self-test mode)."""


AnyStepResponse = Annotated[Union[GenerateResponse, DumpResponse, ImportFixtureResponse, RecipeResponse,
                                  PortResponse],
                            Field(discriminator="step")]
RESPONSES: TypeAdapter = TypeAdapter(AnyStepResponse)
