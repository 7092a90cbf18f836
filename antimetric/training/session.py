"""Everything one training run needs, built from a resolved config: data, model, optimiser."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from antimetric.data.decoded_images import DecodedImages
from antimetric.data.loading import (
    EvalLoaders,
    ImageDataset,
    eval_loaders,
    image_memory_mib,
    image_source,
    load_index,
    num_workers,
)
from antimetric.data.records import DatasetIndex
from antimetric.data.splits import EvalSet, Splits, make_splits
from antimetric.data.transforms import test_transform, train_transform
from antimetric.errors import ConfigError
from antimetric.model.convert import branch_blocks
from antimetric.model.device_plan import DevicePlan, plan_for
from antimetric.model.ensemble import EnsembleNet, build_block, build_model
from antimetric.training.config import RunConfig
from antimetric.training.decisions import StartDecisions
from antimetric.training.memory_estimate import check_memory
from antimetric.training.meta_classes import assign_meta_classes, check_meta_class_size, load_meta_ids
from antimetric.training.parallel.distributed import check_group, group_size, rank
from antimetric.training.step import make_optimizer, prepare_device


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
    index = load_index(data, progress, started_on=pinned.get("data_digest"))
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

    image_root, crop = image_source(data, index, progress)
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


def _meta_ids(config: RunConfig, train_classes: list[int]) -> np.ndarray:
    m, d = config.model.ensemble_size, config.model.meta_class_size
    check_meta_class_size(len(train_classes), d, m)
    if config.train.load_ids:
        return load_meta_ids(Path(config.train.load_ids), train_classes, d, m)
    return assign_meta_classes(len(train_classes), d, m, config.train.seed)
