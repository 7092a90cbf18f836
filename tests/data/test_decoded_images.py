"""Images kept decoded in memory: the same tensors as decoding every epoch, without reading the files again."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as tv

from antimetric.data import transforms
from antimetric.data.decoded_images import DecodedImages
from antimetric.data.loading import DEFAULT_IMAGE_MEMORY_MIB, ImageDataset
from antimetric.data.manifest.prepare import load_or_prepare
from antimetric.data.readers.source import benchmark
from antimetric.data.table import TABLE
from antimetric.errors import ConfigError
from antimetric.training.config import RunConfig, resolve
from antimetric.training.session import build_session
from tests.fixtures.datasets import make_cub

SIZE = 32
CUB = (TABLE["cub"].mean, TABLE["cub"].std)  # a CUB run's normalisation


def _photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _seed_pipeline(train: bool, crop_type: str) -> tv.Compose:
    """The seed's PIL pipeline, as it was written before the transforms ran in two steps."""
    mean, std = CUB
    resize = transforms.resize_transform(crop_type, SIZE)
    if train:
        crop = [] if crop_type == "cropped" else [tv.RandomCrop(SIZE)]
        steps = [resize, *crop, tv.RandomHorizontalFlip()]
    else:
        steps = [resize, *([] if crop_type == "cropped" else [tv.CenterCrop(SIZE)])]
    return tv.Compose([*steps, tv.ToTensor(), tv.Normalize(mean, std)])


@pytest.mark.parametrize("size", [(60, 45), (45, 61), (32, 32), (97, 33)])
@pytest.mark.parametrize("crop_type", ["uncropped", "cropped"])
@pytest.mark.parametrize("train", [True, False])
def test_the_two_step_transform_computes_the_seed_pipeline_bit_for_bit(size, crop_type, train):
    image = _photo(*size, seed=sum(size))
    ours = (transforms.train_transform if train else transforms.test_transform)(CUB, crop_type, SIZE)
    seed = _seed_pipeline(train, crop_type)
    for draw in range(4):  # the same random crops and flips from the same generator state
        torch.manual_seed(draw)
        expected = seed(image)
        torch.manual_seed(draw)
        assert torch.equal(ours(image), expected)
        torch.manual_seed(draw)
        assert torch.equal(ours.finish(ours.decoded(image)), expected)


@pytest.fixture
def cub(tmp_path):
    info = make_cub(tmp_path / "data" / "cub", n_classes=4, per_class=3)
    for i, (path, *_rest) in enumerate(info["records"]):
        _photo(*((60, 45) if i % 2 else (45, 60)), seed=i).save(info["root"] / path, quality=95)
    return tmp_path / "data", info


def _epoch(dataset: ImageDataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


@pytest.mark.parametrize("crop_type", ["uncropped", "cropped"])
def test_kept_images_give_what_decoding_gives_and_are_not_read_again(cub, crop_type):
    data_path, info = cub
    index = load_or_prepare(benchmark("cub", data_path))
    transform = transforms.train_transform(CUB, crop_type, SIZE)
    crop = crop_type == "cropped"
    torch.manual_seed(0)
    decoding = ImageDataset(index.records, index.root, transform, crop)
    expected = [_epoch(decoding), _epoch(decoding)]
    memory = DecodedImages(2**20)
    keeping = ImageDataset(index.records, index.root, transform, crop, memory=memory)
    torch.manual_seed(0)
    assert torch.equal(_epoch(keeping), expected[0]) and len(memory) == len(index.records)
    shutil.rmtree(info["root"] / "images")  # a second epoch that opened a file would fail now
    assert torch.equal(_epoch(keeping), expected[1])  # other random crops and flips of the kept images


def test_the_budget_bounds_what_is_kept(cub):
    data_path, _ = cub
    index = load_or_prepare(benchmark("cub", data_path))
    transform = transforms.test_transform(CUB, "cropped", SIZE)
    one_image = 3 * SIZE * SIZE
    memory = DecodedImages(5 * one_image + one_image // 2)
    dataset = ImageDataset(index.records, index.root, transform, True, memory=memory)
    for i in range(len(dataset)):
        dataset[i]
    assert len(memory) == 5 and memory.used_bytes == 5 * one_image <= memory.budget_bytes
    none = DecodedImages(0)
    ImageDataset(index.records, index.root, transform, True, memory=none)[0]
    assert len(none) == 0


def _config(data_path, tmp_path, **values) -> RunConfig:
    return resolve(RunConfig.from_flat({"data_name": "cub", "data_path": str(data_path), "backbone": "tiny",
                                        "ensemble_size": 2, "meta_class_size": 2, "image_size": SIZE,
                                        "batch_size": 2, "num_epochs": 1, "pretrained": False,
                                        "output_dir": str(tmp_path / "runs"), **values}))


def test_a_session_loading_in_its_own_process_keeps_images_and_records_the_budget(cub, tmp_path):
    data_path, _ = cub
    session = build_session(_config(data_path, tmp_path, num_workers=0))
    assert session.decisions.image_memory == DEFAULT_IMAGE_MEMORY_MIB and session.config.data.image_memory is None
    stores = {id(loader.dataset.memory) for loader in (session.train_loader, session.test.query)}
    assert len(stores) == 1 and session.train_loader.dataset.memory.budget_bytes == DEFAULT_IMAGE_MEMORY_MIB * 2**20
    with_workers = build_session(_config(data_path, tmp_path, num_workers=1))
    assert with_workers.decisions.image_memory == 0
    off = build_session(_config(data_path, tmp_path, num_workers=0, image_memory=0))
    next(iter(off.train_loader))
    assert len(off.train_loader.dataset.memory) == 0


@pytest.mark.parametrize("values, message", [
    ({"image_memory": -1}, "--image-memory must be 0 or more MiB"),
    ({"image_memory": 64, "num_workers": 2}, "the 2 --num-workers processes restart every epoch; add --num-workers 0"),
])
def test_image_memory_refuses_what_it_cannot_do(cub, tmp_path, values, message):
    with pytest.raises(ConfigError, match=message):
        _config(cub[0], tmp_path, **values)


def test_config_json_of_an_old_run_without_the_option_still_reads(tmp_path):
    values = json.loads(json.dumps(RunConfig().to_flat()))
    del values["image_memory"]
    assert RunConfig.from_flat(values).data.image_memory is None
