"""Everything one training run needs, built from a resolved config: data, model, optimiser."""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from antimetric.base.cpus import available_cpus
from antimetric.data.cache import CacheForm, find_cache
from antimetric.data.dataset import ImageDataset
from antimetric.data.decoded_images import DecodedImages
from antimetric.data.demo import ensure_demo
from antimetric.data.manifest.prepare import NO_MANIFEST, load_or_prepare, why_out_of_date
from antimetric.data.records import DatasetIndex
from antimetric.data.splits import EvalSet, Splits, make_splits
from antimetric.data.transforms import ImageTransform, test_transform, train_transform
from antimetric.errors import ConfigError
from antimetric.model.convert import branch_blocks
from antimetric.model.device_plan import DevicePlan, plan_for
from antimetric.model.ensemble import EnsembleNet, build_block, build_model
from antimetric.training.config import RunConfig, data_source
from antimetric.training.decisions import StartDecisions
from antimetric.training.memory_estimate import check_memory
from antimetric.training.meta_classes import assign_meta_classes, check_meta_class_size, load_meta_ids
from antimetric.training.parallel.distributed import check_group, group_size, rank
from antimetric.training.step import make_optimizer, prepare_device


@dataclass
class EvalLoaders:
    query: DataLoader
    gallery: DataLoader | None


@dataclass
class TrainingSession:
    config: RunConfig  # resolved: what was asked, with the dataset's defaults
    decisions: StartDecisions  # what the session settled where the config left the choice to the machine
    device: torch.device
    plan: DevicePlan  # how the model trains on the device (plan_for)
    index: DatasetIndex
    splits: Splits
    meta_ids: np.ndarray  # (ensemble_size, n_train_classes)
    model: EnsembleNet
    train_model: torch.nn.Module  # the model, or its torch.compile'd wrapper (same parameters)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    train_loader: DataLoader
    val: EvalLoaders | None
    test: EvalLoaders
    image_root: Path  # where the images are read: the dataset's own files, or its resized cache

    @property
    def branch_parallel(self) -> bool:
        """Whether this process holds one block of the ensemble's branches (training/parallel/distributed.py)."""
        return self.model.ensemble_size != self.model.whole_size


def pick_device(name: str) -> torch.device:
    """The device `name` (auto, cpu, cuda, cuda:K) means here; in a group of processes `cuda` and auto mean this
    process's own GPU, the current CUDA device (torchrun's processes set their LOCAL_RANK's, Ray Train's workers
    theirs)."""
    if group_size() > 1 and (name == "cuda" or name == "auto" and torch.cuda.is_available()):
        name = f"cuda:{torch.cuda.current_device()}"
    elif name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for, but torch sees no CUDA device; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def load_index(config: RunConfig, progress: bool, started_on: str | None = None) -> DatasetIndex:
    """The run's dataset from its manifest (prepared first where needed; the demo generated on first use).

    `started_on`: the digest of the data a resumed run started on; data changed since is refused in one line."""
    source = data_source(config.data)
    if not source.own and source.name == "demo":
        ensure_demo(source.dataset_dir, progress=progress)
    stale = why_out_of_date(source) if started_on is not None else None
    if stale is not None and stale != NO_MANIFEST:
        raise ConfigError(f"--resume: {source.name}: {stale}; this run trained on the data as it was: start a new "
                          "run, which prepares the data again")
    index = load_or_prepare(source, progress=progress)
    if started_on is not None and index.digest() != started_on:
        raise ConfigError(f"--resume: the images, labels or splits of {source.name} changed since this run started; "
                          "it trained on the data as it was: start a new run")
    if config.data.crop_type == "cropped" and not any(record.box is not None for record in index.records):
        raise ConfigError(f"--crop-type cropped needs bounding boxes, which {source.name} does not have (a table "
                          "gives them in columns x_1, x_2, y_1, y_2); drop --crop-type")
    return index


def config_splits(config: RunConfig, index: DatasetIndex) -> Splits:
    """The run's splits: --val-fraction of the training classes held out, drawn with --split-seed (default
    --seed), or its class-disjoint fold --val-fold."""
    data = config.data
    seed = data.split_seed if data.split_seed is not None else config.train.seed
    return make_splits(index, data.val_fraction, data.max_per_class, seed, val_fold=data.val_fold)


def build_session(config: RunConfig, *, progress: bool = False, pinned: dict[str, Any] | None = None) -> TrainingSession:
    """`config` must be resolved (antimetric.training.config.resolve). `pinned`: decisions to take as they are
    rather than decide (a resumed run's, as its run made them: StartDecisions' fields)."""
    data, model_cfg, train = config.data, config.model, config.train
    pinned = pinned or {}
    device = pick_device(_own_device(pinned.get("device", train.device), "device" in pinned))
    plan = plan_for(device, model_cfg.implementation, precision=pinned.get("precision", train.precision),
                    backbone=model_cfg.backbone, activation_checkpointing=model_cfg.activation_checkpointing,
                    compile=train.compile)
    check_group(model_cfg.ensemble_size, model_cfg.implementation)
    block = branch_blocks(model_cfg.ensemble_size, group_size())[rank()]  # all of them on one process
    check_memory(_block_config(config, block), device, plan=plan)  # before any data is read
    torch.manual_seed(train.seed)
    index = load_index(config, progress, started_on=pinned.get("data_digest"))
    splits = config_splits(config, index)
    meta_ids = _meta_ids(config, splits.train_classes)
    prepare_device(plan)
    with device:  # initialise the weights where they will live
        if len(block) == model_cfg.ensemble_size:
            model = build_model(model_cfg, model_cfg.implementation)
        else:
            model = build_block(model_cfg, block, model_cfg.implementation)
    train_model = model.configure(plan)
    optimizer = make_optimizer(model, train.lr, plan)
    # x0.1 after 50 % and 70 % of the epochs; never at 0, which would cut the rate before epoch 1
    milestones = [max(1, int(0.5 * train.num_epochs)), max(1, int(0.7 * train.num_epochs))]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)

    image_root, crop = image_source(config, index, progress)
    workers = num_workers(pinned.get("num_workers", data.num_workers))
    memory = DecodedImages(image_memory_mib(pinned.get("image_memory", data.image_memory), workers) * 2**20)
    targets = {label: torch.as_tensor(meta_ids[block.start:block.stop, col])  # this process's branches'
               for col, label in enumerate(splits.train_classes)}
    train_set = ImageDataset(splits.train, image_root, train_transform((data.mean, data.std), data.crop_type, data.image_size),
                             crop, targets, memory)
    if len(train_set) < train.batch_size and train.train:
        raise ConfigError(f"{len(train_set)} training images are fewer than --batch-size {train.batch_size}")
    # Seeded again at the start of every epoch (training_state.seed_epoch). Workers are started anew
    # each epoch, so that their seeds come from that epoch's seed: a resumed run repeats exactly.
    generator = torch.Generator().manual_seed(train.seed)
    decisions = StartDecisions(device=str(device), precision="bf16" if plan.bf16 else "fp32",
                               implementation=model_cfg.implementation, num_workers=workers,
                               image_memory=memory.budget_bytes // 2**20, data_digest=index.digest())
    train_loader = DataLoader(train_set, batch_size=train.batch_size, shuffle=True, drop_last=True,
                              num_workers=workers, pin_memory=device.type == "cuda", generator=generator)

    transform = test_transform((data.mean, data.std), data.crop_type, data.image_size)

    def loaders(eval_set: EvalSet) -> EvalLoaders:
        return eval_loaders(eval_set, image_root, transform, crop, config.eval.eval_batch_size, workers, device, memory)

    return TrainingSession(
        config, decisions, device, plan, index, splits, meta_ids, model, train_model, optimizer, scheduler, train_loader,
        loaders(splits.val) if splits.val is not None else None, loaders(splits.test), image_root,
    )


def _own_device(name: str, recorded: bool) -> str:
    """A resumed run's recorded GPU (`cuda:0`, its process 0's) is, in a group of processes, each one's own."""
    return "cuda" if recorded and group_size() > 1 and name.startswith("cuda") else name


def _block_config(config: RunConfig, block: range) -> RunConfig:
    """The config as far as this process's memory goes: its block of branches."""
    if len(block) == config.model.ensemble_size:
        return config
    return dataclasses.replace(config, model=dataclasses.replace(config.model, ensemble_size=len(block)))


def eval_loaders(eval_set: EvalSet, image_root: Path, transform: ImageTransform, crop: bool, batch_size: int,
                 workers: int, device: torch.device, memory: DecodedImages | None = None) -> EvalLoaders:
    """Loaders of an evaluation set's queries (and gallery), in record order, unshuffled."""
    def loader(records):
        return DataLoader(ImageDataset(records, image_root, transform, crop, memory=memory), batch_size=batch_size,
                          num_workers=workers, pin_memory=device.type == "cuda")
    return EvalLoaders(loader(eval_set.query), loader(eval_set.gallery) if eval_set.gallery is not None else None)


def image_source(config: RunConfig, index: DatasetIndex, progress: bool) -> tuple[Path, bool]:
    """The folder to read images from and whether boxes still need cropping: the resized cache
    when one matches this crop type, image size and manifest, else the dataset's own files."""
    data = config.data
    crop = data.crop_type == "cropped"
    if not data.image_cache:
        return index.root, crop
    form = CacheForm(data.crop_type, data.image_size)
    source = data_source(data)
    folder = find_cache(source.work_dir, source.name, form, index.root, index.records)
    if folder is None:
        return index.root, crop
    if progress:
        print(f"reading resized images from {folder}", file=sys.stderr)
    return folder, False  # boxes were applied when the cache was written


def _meta_ids(config: RunConfig, train_classes: list[int]) -> np.ndarray:
    m, d = config.model.ensemble_size, config.model.meta_class_size
    check_meta_class_size(len(train_classes), d, m)
    if config.train.load_ids:
        return load_meta_ids(Path(config.train.load_ids), train_classes, d, m)
    return assign_meta_classes(len(train_classes), d, m, config.train.seed)


DEFAULT_IMAGE_MEMORY_MIB = 1024


def image_memory_mib(requested: int | None, workers: int) -> int:
    """MiB of decoded images to keep between epochs: what --image-memory asks, else 1024 MiB when the
    images load in this process (a worker process's store would end with its epoch)."""
    if requested is not None:
        return requested
    return DEFAULT_IMAGE_MEMORY_MIB if workers == 0 else 0


def num_workers(requested: int | None) -> int:
    """Decoding in the main process is fastest on two cores; more cores get worker processes."""
    if requested is not None:
        return requested
    cpus = available_cpus()
    return 0 if cpus <= 2 else min(8, cpus - 1)
