"""Images kept decoded and resized in memory between epochs, so that only the first epoch decodes them.

On the demo (64 px images, 2 cores, one trial per core) decoding and resizing took a fifth of a
trial's time, every epoch, for images that are the same each time: what changes per epoch (the
random crop and flip) comes after (antimetric.data.transforms). The store holds the uint8 tensors
of ImageTransform.decoded, filled as the images are first read, up to a byte budget; past it,
images are decoded every time as before. It lives in the process that loads the images, so a
session uses it only when loading in the main process (worker processes restart every epoch).
"""
from __future__ import annotations

import torch


class DecodedImages:
    """uint8 image tensors by record path, at most `budget_bytes` of them (a budget of 0 keeps none)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self._images: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._images)

    def get(self, path: str) -> torch.Tensor | None:
        return self._images.get(path)

    def keep(self, path: str, image: torch.Tensor) -> None:
        """Keep `image` (not a copy: the transforms that follow never write into it) while it fits."""
        size = image.numel() * image.element_size()
        if path not in self._images and self.used_bytes + size <= self.budget_bytes:
            self._images[path] = image
            self.used_bytes += size
