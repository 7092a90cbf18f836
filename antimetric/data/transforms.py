"""The seed's preprocessing, with the image size as a parameter (the seed used 256)."""
from __future__ import annotations

from torchvision import transforms

from antimetric.data.table import RGB, TABLE

# Per-dataset channel statistics for the input normalisation.
MEAN_STD: dict[str, tuple[RGB, RGB]] = {name: (row.mean, row.std) for name, row in TABLE.items()}


def train_transform(data_name: str, crop_type: str, image_size: int) -> transforms.Compose:
    """Uncropped: resize the short side, random square crop; cropped (box already applied):
    resize to a square. Both with a random horizontal flip."""
    crop = [] if crop_type == "cropped" else [transforms.RandomCrop(image_size)]
    return transforms.Compose([
        resize_transform(crop_type, image_size), *crop, transforms.RandomHorizontalFlip(),
        *_to_normalized_tensor(data_name),
    ])


def test_transform(data_name: str, crop_type: str, image_size: int) -> transforms.Compose:
    crop = [] if crop_type == "cropped" else [transforms.CenterCrop(image_size)]
    return transforms.Compose([resize_transform(crop_type, image_size), *crop, *_to_normalized_tensor(data_name)])


def resize_transform(crop_type: str, image_size: int) -> transforms.Resize:
    """The deterministic first step of both transforms, which the image cache applies ahead of time.

    Applied to its own output it changes nothing (same size: PIL copies), so cached images pass
    through the full transforms unchanged up to this point."""
    if crop_type == "cropped":
        return transforms.Resize((image_size, image_size))
    return transforms.Resize(image_size)


def _to_normalized_tensor(data_name: str) -> list:
    mean, std = MEAN_STD[data_name]
    return [transforms.ToTensor(), transforms.Normalize(mean, std)]
