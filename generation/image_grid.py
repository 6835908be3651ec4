"""Labelled image grids for looking at generated samples."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 14  # pixels of the caption strip above each tile
MIN_TILE_SIZE = 64  # smaller images are enlarged (nearest neighbour) so captions fit and pixels stay visible


def make_labelled_grid(
    images: Sequence[Image.Image], captions: Sequence[str], columns: int | None = None, padding: int = 2
) -> Image.Image:
    """Arrange `images` in an RGB grid image with `captions[i]` written above image `i`.

    All images must share one size. `columns` defaults to the ceiling of the square root of the count.
    """
    if len(images) == 0:
        raise ValueError("make_labelled_grid needs at least one image.")
    if len(captions) != len(images):
        raise ValueError(f"Got {len(captions)} captions for {len(images)} images; pass one caption per image.")
    sizes = {image.size for image in images}
    if len(sizes) != 1:
        raise ValueError(f"All images must have the same size, got {sorted(sizes)}.")

    width, height = sizes.pop()
    scale = max(1, math.ceil(MIN_TILE_SIZE / min(width, height)))
    tile_width, tile_height = width * scale, height * scale
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    cell_width = tile_width + padding
    cell_height = LABEL_HEIGHT + tile_height + padding

    grid = Image.new("RGB", (columns * cell_width + padding, rows * cell_height + padding), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for index, (image, caption) in enumerate(zip(images, captions)):
        left = padding + (index % columns) * cell_width
        top = padding + (index // columns) * cell_height
        draw.text((left + 1, top + 1), caption, fill="black", font=font)
        tile = image.convert("RGB").resize((tile_width, tile_height), Image.Resampling.NEAREST)
        grid.paste(tile, (left, top + LABEL_HEIGHT))
    return grid
