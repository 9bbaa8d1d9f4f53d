"""Mask2Former's own recipe section: the dataset metadata detectron2 keeps outside the model config (class names, the
thing/stuff split, the dataset's label ids), and which upstream yaml the recipe's config keys apply to."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from parity.contracts.familyspec import DatasetClass, FamilySpec


class Mask2FormerSpec(FamilySpec):
    """Mask2Former settings."""

    family: Literal["mask2former"] = "mask2former"
    """This section is Mask2Former's."""
    dataset: str | None = None
    """The detectron2 dataset these classes describe (DATASETS.TRAIN[0]); when it is registered in the origin, the
    origin checks the thing/stuff split against its MetadataCatalog entry."""
    classes: list[DatasetClass] = Field(default_factory=list)
    """One entry per class in contiguous label order (len = NUM_CLASSES): the port's id2label / label2id, and the
    thing/stuff split panoptic and instance post-processing use (detectron2's thing_dataset_id_to_contiguous_id);
    empty: numbered labels and no split."""
    reduce_labels: bool = False
    """The processor's do_reduce_labels (ADE20K semantic: label 0 'other' is ignored and the rest shift down by one)."""
    config_file: str | None = None
    """An upstream yaml inside the Mask2Former repository that original_config's keys are checked against and merged
    onto (the published variants); None: original_config is the complete merged config (`parity recipe new`)."""

    @model_validator(mode="after")
    def _one_split_convention(self) -> Mask2FormerSpec:
        known = {c.isthing is None for c in self.classes}
        if len(known) > 1:
            raise ValueError("classes: either every class says isthing or none does")
        return self

    def check_original_config(self, original_config: dict[str, Any]) -> None:
        num_classes = original_config["MODEL"]["SEM_SEG_HEAD"]["NUM_CLASSES"]
        if self.classes and len(self.classes) != num_classes:
            raise ValueError(f"{len(self.classes)} classes for NUM_CLASSES={num_classes}")

    def thing_ids(self) -> list[int] | None:
        """Contiguous ids of the 'thing' classes, or None when the recipe has no thing/stuff split."""
        if not self.classes or self.classes[0].isthing is None:
            return None
        return [i for i, c in enumerate(self.classes) if c.isthing]

    def id2label(self, num_classes: int) -> dict[int, str]:
        if self.classes:
            return {i: c.name for i, c in enumerate(self.classes)}
        return {i: f"class_{i}" for i in range(num_classes)}


SPEC = Mask2FormerSpec
