"""Raw input images: deterministic synthetic pictures, or PNGs from a golden fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from parity.contracts.errors import ParityError
from parity.contracts.recipe import Recipe


def synthetic_image(seed: int, height: int, width: int) -> np.ndarray:
    """A deterministic HxWx3 uint8 picture with edges, gradients and texture (not noise alone, not flat)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width, 3))
    for channel in range(3):
        fx, fy, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 6.28)
        image[..., channel] = 128 + 80 * np.sin(fx * 6.28 * xx / width + fy * 6.28 * yy / height + phase)
    for _ in range(4):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(0.1, 0.3) * min(height, width)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        image[inside] = rng.uniform(0, 255, size=3)
    image += rng.normal(0, 8, size=image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8)


def raw_images(recipe: Recipe, staging: Path, fixtures: Path | None) -> tuple[dict[str, np.ndarray], dict[str, Path]]:
    """{name: HxWx3 uint8} for the original preprocessing, and {file name in the dump: source PNG}."""
    from PIL import Image

    arrays, files = {}, {}
    for spec in recipe.inputs.images:
        if spec.kind == "synthetic":
            path = staging / f"{spec.name}.png"
            Image.fromarray(synthetic_image(spec.seed, spec.height, spec.width)).save(path, format="PNG")
        else:
            if fixtures is None:
                raise ParityError(f"{recipe.id} reads image {spec.filename} from fixture {spec.fixture}, "
                                  "but no fixtures folder was given")
            path = fixtures / spec.fixture / spec.filename
            if not path.is_file():
                raise ParityError(f"fixture image not found: {path}")
        arrays[spec.name] = np.asarray(Image.open(path).convert("RGB"))
        files[f"{spec.name}.png"] = path
    return arrays, files
