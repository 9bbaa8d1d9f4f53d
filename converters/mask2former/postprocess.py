"""Post-processing parity: transformers' image-processor post-processing vs the original's post-processed outputs."""

from __future__ import annotations


def port_outputs(recipe, processor, dump, outputs):
    return {}
