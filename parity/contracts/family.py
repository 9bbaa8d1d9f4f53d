"""The family interface as code: what a `parity/families/<name>/` package provides, checked where it is used.

`Family` (in `family.py` of the package) is what the host registry reads. `OriginModule` and `PortModule` are what
the two runtimes call in `origin.py` and `port.py`. The host checks them without importing those modules (they need
torch; the host never imports it), by reading the names the files define; the runtimes check the imported modules.
Both go through `missing_members`, so the Protocols are the single definition (docs/families.md is tested against them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from parity.contracts.recipe import Recipe

if TYPE_CHECKING:
    from parity.contracts.steps import RecipeSource


@dataclass(frozen=True)
class Family:
    """One model family: its variants and the environments its two halves run in."""

    name: str
    """Package name under parity/families/ (and every recipe's `family`)."""
    variants: tuple[Recipe, ...]
    """The registry's recipes: published variants, tiny offline ones, one per golden fixture."""
    origins: tuple[str, ...]
    """Origin environments (folders under images/) that can run the original; the first is the default."""
    fixture_recipes: dict[str, str] = field(default_factory=dict)
    """Golden fixture folder name -> id of the recipe that reproduces it."""
    fixture_env: str | None = None
    """Environment that imports this family's fixtures (default: the first origin). Families whose origin cannot be
    installed locally use `fixtures`: torch + safetensors only, no original package, no transformers."""
    reads_configuration: Literal["origin", "host"] = "origin"
    """Where `parity recipe new` reads the original's configuration: 'origin' (origin.py's read_configuration parses
    it with the original tooling inside the origin environment) or 'host' (its constructor arguments are plain data,
    so recipes.py needs no original package)."""

    @property
    def importer_env(self) -> str:
        return self.fixture_env or self.origins[0]


class OriginModule(Protocol):
    """`parity/families/<name>/origin.py`: runs inside the origin environment, never imports transformers."""

    UPSTREAM: str
    """What original code runs (package==version or repo@commit), recorded in every dump."""
    PACKAGES: tuple[str, ...]
    """Distributions whose versions define the result, recorded in every dump."""

    def generate_checkpoint(self, recipe: Recipe, path: Path) -> None:
        """Build the ORIGINAL model, re-draw every parameter and float buffer from recipe.checkpoint.generate.seed,
        save it in the original container format."""

    def load_original(self, recipe: Recipe, checkpoint: Path) -> tuple[Any, dict[str, Any]]:
        """The original loader (strict): the model and the state dict it loaded."""

    def run_captures(self, recipe: Recipe, model: Any, images: dict[str, Any], device: str) -> tuple[Any, Any]:
        """Original preprocessing of the raw images ({name: HxWx3 uint8}), then the forward, recording inputs and
        references into two `parity.origin.capture.CaptureLog`s in execution order."""

    def fixture_state_dict(self, recipe: Recipe, checkpoint: Path) -> dict[str, Any]:
        """How a golden fixture's checkpoint becomes the original state dict (used when the fixture carries no
        state_dict.safetensors); upstream imports stay inside functions so this runs in the `fixtures` env."""


class PortModule(Protocol):
    """`parity/families/<name>/port.py`: runs inside the transformers environment, never imports the original."""

    def hf_config(self, recipe: Recipe) -> Any:
        """The transformers config derived from recipe.original_config (+ recipe.hf.config_overrides)."""

    def rules(self, recipe: Recipe) -> list[Any]:
        """Declared mapping rules (`parity.port.rules.Rule`); every original key must be claimed by one."""

    def build_processor(self, recipe: Recipe) -> Any:
        """The processor saved beside the model."""

    def port_captures(self, recipe: Recipe, model: Any, processor: Any, dump: Any, device: str
                      ) -> dict[str, tuple[str, Any]]:
        """{origin capture name: (port description, tensor in the ORIGIN's layout)}, running the port on dump.inputs;
        which port module pairs with which capture is derived from the recipe's configuration."""

    def processor_checks(self, recipe: Recipe, processor: Any, dump: Any) -> tuple[list[tuple], dict[str, str]]:
        """([(name, port description, origin tensor, port tensor), ...], {"processor": class, "note": ...})."""


class RecipesModule(Protocol):
    """`parity/families/<name>/recipes.py`: pure data (importable on the host and in every environment), what turns
    the original's configuration into a complete recipe for `parity recipe new`."""

    def new_recipe(self, source: RecipeSource, configuration: dict[str, Any]) -> Recipe:
        """A complete Recipe from what the user gave (`source`) and the original's configuration as data: what
        origin.py's read_configuration returned, or (families that read it on the host) `source.arguments`."""


CONFIGURATION_READER = "read_configuration"
"""origin.py's function `(source: RecipeSource) -> dict` for families whose configuration is read in the origin: the
original tooling parses the user's configuration (mmseg config, detectron2 yaml, SAM build arguments or checkpoint)."""


def recipes_module(family: str) -> RecipesModule:
    """`parity.families.<family>.recipes`, checked against the RecipesModule Protocol."""
    return load_half(family, "recipes", RecipesModule)


def required_members(protocol: type) -> tuple[str, ...]:
    """The names a module must define to satisfy a Protocol: its annotated constants and its methods."""
    names = list(getattr(protocol, "__annotations__", {}))
    names += [n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")]
    return tuple(dict.fromkeys(names))


def missing_members(protocol: type, defined: Iterable[str]) -> list[str]:
    """Which of the Protocol's members a module lacks (empty when it conforms)."""
    have = set(defined)
    return [name for name in required_members(protocol) if name not in have]


def load_half(family: str, half: str, protocol: type):
    """Import `parity.families.<family>.<half>` (inside the environment that runs it) and check it against its
    Protocol; both runtimes load their half through here."""
    import importlib

    from parity.contracts.errors import ParityError

    name = f"parity.families.{family}.{half}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name in (name, f"parity.families.{family}"):
            raise ParityError(f"family {family!r} has no {half} module ({name})") from None
        raise
    missing = missing_members(protocol, dir(module))
    if missing:
        raise ParityError(f"parity/families/{family}/{half}.py lacks {', '.join(missing)} ({protocol.__name__})")
    return module
