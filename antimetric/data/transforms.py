"""The seed's preprocessing, with the image size as a parameter (the seed used 256).

Each transform runs in two steps, so that the first can be kept (antimetric.data.decoded_images):
`decoded` resizes a PIL image (deterministic) and turns it into a uint8 tensor; `finish` crops,
flips and normalises that tensor, randomly in training. Together they compute what the seed's
PIL pipeline (Resize, RandomCrop or CenterCrop, RandomHorizontalFlip, ToTensor, Normalize)
computes, bit for bit and with the same draws from torch's random generator."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as F

from antimetric.data.table import RGB

# (mean, std) per channel, on the 0..1 scale: a run's --mean and --std (by default its dataset's row of the table)
Normalisation = tuple[RGB, RGB]


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> normalised float tensor (3, image_size, image_size), in two steps."""

    resize: transforms.Resize  # deterministic: what the resized cache and the in-memory images hold
    finish: transforms.Compose  # uint8 tensor (3, h, w) -> float tensor: crop, flip, scale, normalise

    def decoded(self, image: Image.Image) -> torch.Tensor:
        """The resized image as a uint8 tensor (3, h, w): the step a transform always takes the same way."""
        return F.pil_to_tensor(self.resize(image))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.finish(self.decoded(image))


def train_transform(normalisation: Normalisation, crop_type: str, image_size: int) -> ImageTransform:
    """Uncropped: resize the short side, random square crop; cropped (box already applied):
    resize to a square. Both with a random horizontal flip."""
    crop = [] if crop_type == "cropped" else [transforms.RandomCrop(image_size)]
    return ImageTransform(resize_transform(crop_type, image_size), transforms.Compose([
        *crop, transforms.RandomHorizontalFlip(), *_to_normalized_float(normalisation),
    ]))


def test_transform(normalisation: Normalisation, crop_type: str, image_size: int) -> ImageTransform:
    crop = [] if crop_type == "cropped" else [transforms.CenterCrop(image_size)]
    return ImageTransform(resize_transform(crop_type, image_size),
                          transforms.Compose([*crop, *_to_normalized_float(normalisation)]))


def resize_transform(crop_type: str, image_size: int) -> transforms.Resize:
    """The deterministic first step of both transforms, which the image cache applies ahead of time.

    Applied to its own output it changes nothing (same size: PIL copies), so cached images pass
    through the full transforms unchanged up to this point."""
    if crop_type == "cropped":
        return transforms.Resize((image_size, image_size))
    return transforms.Resize(image_size)


def _to_normalized_float(normalisation: Normalisation) -> list:
    """uint8 0..255 -> float 0..1 (as ToTensor divides), then the dataset's normalisation."""
    mean, std = normalisation
    return [transforms.ConvertImageDtype(torch.float32), transforms.Normalize(mean, std)]
