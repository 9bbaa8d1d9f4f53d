"""UperNet's own recipe section: the dataset's classes and label convention (what the config's dataset says)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from parity.contracts.familyspec import DatasetClass, FamilySpec


class UperNetSpec(FamilySpec):
    """UperNet-ConvNeXt settings."""

    family: Literal["upernet"] = "upernet"
    """This section is UperNet's."""
    classes: list[DatasetClass] = Field(default_factory=list)
    """The dataset's classes in label order, one per decode-head class (the port's id2label and the CLASSES a
    generated checkpoint's meta records); empty: numbered labels class_0, class_1, ..."""
    reduce_zero_label: bool = True
    """The dataset's reduce_zero_label (ADE20K: label 0 'other' is ignored and the rest shift down by one): the
    processor's do_reduce_labels."""

    def check_original_config(self, original_config: dict[str, Any]) -> None:
        if not self.classes:
            return
        for stack, section in original_config.items():
            if isinstance(section, dict) and "model" in section:
                num_classes = section["model"]["decode_head"]["num_classes"]
                if len(self.classes) != num_classes:
                    raise ValueError(f"{len(self.classes)} class names for the {stack} decode head's "
                                     f"num_classes={num_classes}")

    def id2label(self, num_classes: int) -> dict[int, str]:
        """Label id -> class name (numbered when the recipe names no classes)."""
        if self.classes:
            return {i: c.name for i, c in enumerate(self.classes)}
        return {i: f"class_{i}" for i in range(num_classes)}


SPEC = UperNetSpec
