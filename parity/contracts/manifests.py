"""DumpManifest: what an origin environment wrote, enough to diff the dump anywhere with no access to the origin."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from parity.contracts.base import SCHEMA_VERSION, Sha256, Strict
from parity.contracts.recipe import Recipe


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
    assets: dict[str, FileEntry] = Field(default_factory=dict)
    """Files the original code read besides the checkpoint (e.g. `clip-vit-b16`), by asset name."""


class UpstreamRepository(Strict):
    url: str
    """The repository's upstream URL."""
    commit: str = Field(pattern=r"^[0-9a-f]{40}$")
    """The commit the image was built from (verified after the fetch)."""
    fetched_from: str
    """Where the commit's objects came from: the URL, or a local checkout in the build context."""
    path: str
    """Where the checkout lives in the image."""


class UpstreamPatch(Strict):
    repository: str
    """Which repository the patch was applied to."""
    name: str
    """The patch file's name (images/<env>/...)."""
    sha256: Sha256
    """The patch file's sha256, checked against the Dockerfile's declaration before it was applied."""


class ImageUpstreamRecord(Strict):
    """/opt/parity-upstream.json of an upstream-source image (written by images/upstream/upstream.py at build time)."""

    repositories: dict[str, UpstreamRepository] = Field(default_factory=dict)
    """Repository name -> what was fetched."""
    patches: list[UpstreamPatch] = Field(default_factory=list)
    """Declared source patches, in the order applied."""
    notes: dict[str, str] = Field(default_factory=dict)
    """Further build facts, e.g. `ops.<name>`: which compiled ops were built and for which targets."""


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
    image_upstream: ImageUpstreamRecord | None = None
    """In an upstream-source image: its record of commits, sources, patches (with sha256) and compiled ops."""
    code_paths: dict[str, str] = Field(default_factory=dict)
    """Which implementation actually ran where the original code picks one at run time, e.g. Mask2Former's
    deformable attention: its compiled op or upstream's pure-PyTorch fallback (with call counts)."""


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

    schema_version: Literal[2] = SCHEMA_VERSION
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
