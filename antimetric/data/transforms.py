"""The seed's preprocessing, with the image size as a parameter (the seed used 256)."""
from __future__ import annotations

from torchvision import transforms

# Per-dataset channel statistics (the seed's values; demo measured on its generated images).
MEAN_STD: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "car": ((0.4853, 0.4965, 0.4295), (0.2237, 0.2193, 0.2568)),
    "cub": ((0.4707, 0.4601, 0.4549), (0.2767, 0.2760, 0.2850)),
    "sop": ((0.5807, 0.5396, 0.5044), (0.2901, 0.2974, 0.3095)),
    "isc": ((0.8324, 0.8109, 0.8041), (0.2206, 0.2378, 0.2444)),
    "demo": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


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
