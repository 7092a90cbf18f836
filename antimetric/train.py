"""fit(): train an ensemble epoch by epoch, evaluate it on held-out classes, keep the best."""
from __future__ import annotations

import csv
import gc
import io
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from antimetric.atomic import save_npz, torch_save, write_json, write_text
from antimetric.config import RunConfig, resolve
from antimetric.errors import ConfigError
from antimetric.evaluate import Embeddings, embed, embeddings_arrays, score
from antimetric.meta_classes import save_meta_ids
from antimetric.metrics import recall_key
from antimetric.session import EvalLoaders, TrainingSession, build_session
from antimetric.step import to_device_batch, training_step

# Files of a run folder.
CONFIG_FILE, META_IDS_FILE, EPOCHS_FILE = "config.json", "meta_ids.json", "epochs.csv"
BEST_FILE, LAST_FILE, FEATURES_FILE = "best.pt", "last.pt", "features.npz"


@dataclass
class EpochResult:
    epoch: int  # 0: the untrained ensemble (--no-train)
    metrics: dict[str, float]  # loss, branch_accuracy, images_per_s, epoch_seconds, lr, val_*, test_*
    is_best: bool


@dataclass
class FitResult:
    run_dir: Path
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


# on_epoch_end(result, save_checkpoint): save_checkpoint(folder) writes a resumable state there.
# Returning True stops training after this epoch.
EpochCallback = Callable[[EpochResult, Callable[[Path], None]], "bool | None"]


def fit(config: RunConfig, on_epoch_end: EpochCallback | None = None, *, resume_from: Path | None = None,
        progress: bool = False) -> FitResult:
    config = resolve(config)
    session = build_session(config, progress=progress)
    run_dir = _make_run_dir(config)
    write_json(run_dir / CONFIG_FILE, config.to_flat())
    save_meta_ids(run_dir / META_IDS_FILE, session.meta_ids, session.splits.train_classes)
    tracker = BestTracker(selection_key(session))
    start_epoch = 1
    if resume_from is not None:
        start_epoch = load_training_state(Path(resume_from), session, tracker) + 1

    if not config.train.train:
        evaluation = evaluate_session(session, progress)
        metrics = evaluation.metrics
        result = EpochResult(0, metrics, tracker.update(0, metrics))
        _record(run_dir, session, result, tracker, evaluation)
        if on_epoch_end is not None:
            on_epoch_end(result, lambda folder: save_training_state(Path(folder), session, 0, tracker))
        return FitResult(run_dir, 0, metrics, tracker.history)

    for epoch in range(start_epoch, config.train.num_epochs + 1):
        metrics = train_one_epoch(session, epoch, progress)
        evaluation = evaluate_session(session, progress)
        metrics.update(evaluation.metrics)
        result = EpochResult(epoch, metrics, tracker.update(epoch, metrics))
        _record(run_dir, session, result, tracker, evaluation)
        save_training_state(run_dir, session, epoch, tracker, filename=LAST_FILE)
        stop = None
        if on_epoch_end is not None:
            stop = on_epoch_end(result, lambda folder: save_training_state(Path(folder), session, epoch, tracker))
        if stop:
            break
    return FitResult(run_dir, tracker.best_epoch, tracker.best_metrics, tracker.history)


def train_one_epoch(session: TrainingSession, epoch: int, progress: bool) -> dict[str, float]:
    model, device, opt = session.model, session.device, session.optimizer
    model.train()
    loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
    lr = opt.param_groups[0]["lr"]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    batches = tqdm(session.train_loader, desc=f"epoch {epoch}", disable=not progress, leave=False)
    for images, targets in batches:
        images = to_device_batch(images, device)
        targets = targets.to(device, non_blocking=True)  # (b, m) meta-class of each image per branch
        try:
            loss, logits = training_step(session.train_model, images, targets, opt)
        except torch.cuda.OutOfMemoryError:
            if not start_checkpointing_after_oom(session):
                raise
            loss, logits = training_step(session.train_model, images, targets, opt)
        loss_sum += loss * images.shape[0]
        correct += (logits.argmax(-1) == targets).float().mean(1).sum()
        seen += images.shape[0]
    session.scheduler.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "loss": (loss_sum / max(seen, 1)).item(),
        "branch_accuracy": (correct / max(seen, 1)).item(),
        "images_per_s": seen / seconds,
        "epoch_seconds": seconds,
        "lr": lr,
    }


@dataclass
class Evaluation:
    metrics: dict[str, float]  # val_* (held-out training classes) and test_* retrieval metrics
    test_query: Embeddings
    test_gallery: Embeddings | None


def start_checkpointing_after_oom(session: TrainingSession) -> bool:
    """With activation_checkpointing left to auto, a step that runs out of GPU memory turns
    checkpointing on (ResNet50 x 48 at batch 32 needs 62 GiB without it, 32 GiB with it on an
    H100) and is retried; returns False where there is nothing left to turn on."""
    branches = session.model.branches
    if session.config.model.activation_checkpointing is not None or getattr(branches, "checkpoint_blocks", True):
        return False
    branches.checkpoint_blocks = True
    session.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    torch.cuda.empty_cache()
    print("out of GPU memory: recomputing activations in the backward pass from now on "
          "(activation checkpointing)", file=sys.stderr)
    return True


def evaluate_session(session: TrainingSession, progress: bool) -> Evaluation:
    metrics: dict[str, float] = {}
    start = time.perf_counter()
    for prefix, loaders in (("val", session.val), ("test", session.test)):
        if loaders is None:
            continue
        query, gallery = _embed_set(session, loaders, progress, prefix)
        scores = score(query, session.config.eval.recalls, gallery, device=session.device,
                       chunk_size=session.config.eval.chunk_size)
        metrics.update({f"{prefix}_{k}": v for k, v in scores.items()})
    metrics["eval_seconds"] = time.perf_counter() - start
    return Evaluation(metrics, query, gallery)


def _embed_set(session: TrainingSession, loaders: EvalLoaders, progress: bool, prefix: str
               ) -> tuple[Embeddings, Embeddings | None]:
    query = embed(session.model, loaders.query, session.device, progress=progress, desc=f"embed {prefix}")
    gallery = None
    if loaders.gallery is not None:
        gallery = embed(session.model, loaders.gallery, session.device, progress=progress, desc=f"embed {prefix} gallery")
    return query, gallery


def selection_key(session: TrainingSession) -> str:
    """Model selection on validation Recall@1; on test Recall@1 (the seed's way) without a validation split."""
    first_k = session.config.eval.recalls[0]
    return f"val_{recall_key(first_k)}" if session.val is not None else f"test_{recall_key(first_k)}"


class BestTracker:
    def __init__(self, key: str) -> None:
        self.key = key
        self.best_epoch = -1
        self.best_value = -np.inf
        self.best_metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []

    def update(self, epoch: int, metrics: dict[str, float]) -> bool:
        self.history.append({"epoch": epoch, **metrics})
        if metrics[self.key] > self.best_value:
            self.best_epoch, self.best_value, self.best_metrics = epoch, metrics[self.key], dict(metrics)
            return True
        return False

    def state_dict(self) -> dict:
        return {"key": self.key, "best_epoch": self.best_epoch, "best_value": float(self.best_value),
                "best_metrics": self.best_metrics, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.key, self.best_epoch, self.best_value = state["key"], state["best_epoch"], state["best_value"]
        self.best_metrics, self.history = dict(state["best_metrics"]), list(state["history"])


def save_training_state(folder: Path, session: TrainingSession, epoch: int, tracker: BestTracker,
                        filename: str = "state.pt") -> Path:
    """Everything needed to resume after `epoch`, readable with torch.load(weights_only=True)."""
    path = Path(folder) / filename
    torch_save(path, {
        "epoch": epoch,
        "model": session.model.state_dict(),
        "optimizer": session.optimizer.state_dict(),
        "scheduler": session.scheduler.state_dict(),
        "meta_ids": torch.as_tensor(session.meta_ids),
        "tracker": tracker.state_dict(),
        "config": session.config.to_flat(),
    })
    return path


def weight_layout(state: dict) -> str:
    """'reference' for the per-branch loop's state dict (branches.stages.{m}.…), else 'batched'."""
    return "reference" if any(k.startswith("branches.stages.0.") or k.startswith("branches.heads.") for k in state) \
        else "batched"


def load_training_state(path: Path, session: TrainingSession, tracker: BestTracker) -> int:
    """Restore a state saved by save_training_state (a file or the folder holding state.pt); returns its epoch."""
    if path.is_dir():
        path = path / "state.pt"
    state = torch.load(path, map_location=session.device, weights_only=True)
    if not np.array_equal(state["meta_ids"].cpu().numpy(), session.meta_ids):
        raise ValueError(f"{path} was trained with other meta-class ids than this run")
    saved, wanted = weight_layout(state["model"]), weight_layout(session.model.state_dict())
    if saved != wanted:
        raise ConfigError(f"{path} holds weights in the {saved} layout and this run builds the {wanted} one; "
                          f"resume it with --implementation {saved}")
    session.model.load_state_dict(state["model"])
    session.optimizer.load_state_dict(state["optimizer"])
    session.scheduler.load_state_dict(state["scheduler"])
    tracker.load_state_dict(state["tracker"])
    return int(state["epoch"])


def _make_run_dir(config: RunConfig) -> Path:
    name = config.run_name or f"{config.data.data_name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(config.output_dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _record(run_dir: Path, session: TrainingSession, result: EpochResult, tracker: BestTracker,
            evaluation: Evaluation) -> None:
    """Rewrite the per-epoch CSV; on a new best, the best weights and the test feature database."""
    write_text(run_dir / EPOCHS_FILE, _history_csv(tracker.history))
    if not result.is_best:
        return
    torch_save(run_dir / BEST_FILE, {
        "epoch": result.epoch,
        "model": session.model.state_dict(),
        "meta_ids": torch.as_tensor(session.meta_ids),
        "metrics": result.metrics,
        "config": session.config.to_flat(),
    })
    arrays = embeddings_arrays("query", evaluation.test_query)
    if evaluation.test_gallery is not None:
        arrays.update(embeddings_arrays("gallery", evaluation.test_gallery))
    save_npz(run_dir / FEATURES_FILE, **arrays)


def _history_csv(history: list[dict[str, float]]) -> str:
    columns = list(dict.fromkeys(key for row in history for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()
