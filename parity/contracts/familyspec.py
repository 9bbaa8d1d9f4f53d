"""Base of the recipe section each family owns (its own inputs and settings), defined apart from the Recipe so that
family spec modules can import it while `parity.contracts.recipe` assembles the union of them."""

from __future__ import annotations

from typing import Any

from parity.contracts.base import Strict
from parity.contracts.sources import AssetSource


class DatasetClass(Strict):
    """One class of the dataset a model was trained on; its label id is its position in the recipe's class list."""

    name: str
    """Class name (becomes the port's id2label / label2id)."""
    isthing: bool | None = None
    """True for a countable 'thing' (instances), False for amorphous 'stuff'; None where the dataset does not say."""
    dataset_id: int | None = None
    """The dataset's own category id (e.g. COCO's 1..90, detectron2's *_dataset_id_to_contiguous_id keys), when it
    differs from the contiguous label id."""


class FamilySpec(Strict):
    """Base of `Recipe.spec`. A family subclasses it in `parity/families/<name>/spec.py` as `SPEC` with
    `family: Literal["<name>"]` and whatever only that family needs (SAM prompt cases, CLIPSeg texts, ...)."""

    family: str
    """The family this section belongs to (equals Recipe.family)."""

    def check_original_config(self, original_config: dict[str, Any]) -> None:
        """Cross-field rules between this section and the recipe's original_config (e.g. one class name per class);
        raise ValueError naming the problem."""

    def fixture_folders(self) -> list[str]:
        """Golden fixture folders the origin reads besides the recipe's images (e.g. a shared CLIP tower)."""
        return []

    def local_files(self) -> list[str]:
        """Absolute paths of files on this machine the origin reads besides the checkpoint (e.g. a CLIP tower)."""
        return []

    def assets(self) -> list[AssetSource]:
        """Files the original code would download at run time, resolved by the host (parity.contracts.sources)."""
        return []
