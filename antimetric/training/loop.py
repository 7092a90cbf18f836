"""fit(): train an ensemble epoch by epoch, evaluate it on held-out classes, keep the best."""
from __future__ import annotations

import csv
import gc
import io
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from antimetric.base.atomic import save_npz, torch_save, write_json, write_text
from antimetric.data.loading import EvalLoaders
from antimetric.errors import ConfigError, NonFiniteLossError, RunInterrupted
from antimetric.evaluation.embed import Embeddings, embed, embeddings_arrays, score
from antimetric.evaluation.grid import grid_rows_from_embeddings, write_grid
from antimetric.evaluation.metrics import recall_key
from antimetric.model.device_plan import to_device_batch
from antimetric.training.config import RunConfig, resolve
from antimetric.training.decisions import DECISIONS_KEY, StartDecisions, split_recorded
from antimetric.training.meta_classes import save_meta_ids
from antimetric.training.parallel.distributed import (
    broadcast,
    check_group,
    check_shared_folder,
    every,
    gather,
    on_first,
    rank,
)
from antimetric.training.parallel.whole_state import whole_model_state
from antimetric.training.run_folder import (
    BEST_FILE,
    CONFIG_FILE,
    EPOCHS_FILE,
    FEATURES_FILE,
    LAST_FILE,
    META_IDS_FILE,
    RETRIEVALS_FILE,
    create_run_dir,
    probe,
    writing,
)
from antimetric.training.session import TrainingSession, build_session
from antimetric.training.state import BestTracker, load_training_state, save_training_state, seed_epoch
from antimetric.training.step import branch_parallel_step, training_step

__all__ = ["EpochResult", "FitResult", "fit", "resume_run"]

# on_epoch_end(result, save_checkpoint): save_checkpoint(folder) writes a resumable state there.
# Returning True stops training after this epoch.
EpochCallback = Callable[["EpochResult", Callable[[Path], None]], "bool | None"]
_NONFINITE_CHECK_STEPS = 20  # how often the loss is checked within an epoch (a check waits for the GPU)


@dataclass
class EpochResult:
    epoch: int  # 0: the untrained ensemble (--no-train)
    metrics: dict[str, float]  # loss, branch_accuracy, images_per_s, epoch_seconds, lr, val_*, test_*
    is_best: bool
    decisions: StartDecisions | None = None  # what the run settled when it started (device, precision, ...)
    run_dir: Path | None = None  # the run folder it was written to
    best_epoch: int = 0  # the selected epoch so far (this one included), and its metrics
    best_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class FitResult:
    run_dir: Path
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def fit(config: RunConfig, on_epoch_end: EpochCallback | None = None, *, resume_from: Path | None = None,
        progress: bool = False, write_last: bool = True) -> FitResult:
    """Train and evaluate in a new run folder (made, and checked writable, before any data is read).

    resume_from: a state saved by on_epoch_end's save_checkpoint (a folder) or a last.pt, to continue
    from. write_last=False skips the run folder's last.pt (for callers that keep their own states).

    In a group of processes (training/parallel/distributed.py) every process calls fit() alike and trains its block of
    branches; process 0 alone makes and writes the run folder and shows progress, and the others' on_epoch_end
    get the same results (save_checkpoint must be called on every process: it gathers the branches)."""
    config = resolve(config)
    check_group(config.model.ensemble_size, config.model.implementation)
    progress = progress and rank() == 0
    run_dir = on_first(lambda: create_run_dir(config))
    try:
        session = build_session(config, progress=progress)
    except BaseException:
        if rank() == 0:
            _remove_if_empty(run_dir)
        raise
    return _run(session, run_dir, on_epoch_end, resume_from, progress, write_last)


def resume_run(run_dir: Path, on_epoch_end: EpochCallback | None = None, *, progress: bool = False,
               overrides: dict[str, Any] | None = None) -> FitResult:
    """Continue a run in its own folder from its last.pt, with its own config.json; `overrides` may
    change only what does not change the result (device, data-loader workers)."""
    run_dir = Path(run_dir)
    progress = progress and rank() == 0
    changed = sorted(set(overrides or {}) - set(RESUME_OVERRIDES))
    if changed:
        raise ConfigError(f"--resume continues a run with its own {CONFIG_FILE}; drop --{changed[0].replace('_', '-')}")
    on_first(lambda: _check_resumable(run_dir))
    check_shared_folder(run_dir)  # every process of a group reads the run's state
    overrides = overrides or {}
    try:
        asked, decided = split_recorded(json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8")),
                                        f"--resume: {run_dir / CONFIG_FILE}")
        if "num_workers" in overrides and "image_memory" not in overrides:
            asked["image_memory"] = None  # decided for the old worker count; decided anew for the new one
            decided.pop("image_memory", None)
        asked.update(overrides, output_dir=str(run_dir.parent), run_name=run_dir.name)
        config = resolve(RunConfig.from_flat(asked))
    except (OSError, ValueError, AttributeError) as error:
        raise ConfigError(f"--resume: cannot read {run_dir / CONFIG_FILE} ({error})") from None
    pinned = {key: value for key, value in decided.items() if key not in overrides}  # decided as the run did
    on_first(lambda: probe(run_dir))
    session = build_session(config, progress=progress, pinned=pinned)
    return _run(session, run_dir, on_epoch_end, run_dir / LAST_FILE, progress, write_last=True)


RESUME_OVERRIDES = ("device", "num_workers", "image_memory")


def _check_resumable(run_dir: Path) -> None:
    for name in (CONFIG_FILE, LAST_FILE):
        if not (run_dir / name).is_file():
            raise ConfigError(f"--resume: no {name} in {run_dir}; pass the folder of a run that finished an epoch")


def _run(session: TrainingSession, run_dir: Path, on_epoch_end: EpochCallback | None, resume_from: Path | None,
         progress: bool, write_last: bool) -> FitResult:
    config = session.config
    flat = config.to_flat()
    decisions = session.decisions
    tracker = BestTracker(selection_key(session))
    start_epoch = 1
    if resume_from is not None:
        start_epoch = load_training_state(Path(resume_from), session, tracker) + 1
    def write_config() -> None:
        with writing(run_dir):
            write_json(run_dir / CONFIG_FILE, {**flat, DECISIONS_KEY: decisions.as_dict()})
            save_meta_ids(run_dir / META_IDS_FILE, session.meta_ids, session.splits.train_classes)
    on_first(write_config)

    if not config.train.train:
        evaluation = evaluate_session(session, progress)
        metrics = evaluation.metrics
        result = EpochResult(0, metrics, tracker.update(0, metrics), decisions, run_dir, tracker.best_epoch,
                             tracker.best_metrics)
        _record(run_dir, session, result, tracker, evaluation)
        if on_epoch_end is not None:
            on_epoch_end(result, lambda folder: save_training_state(Path(folder), session, 0, tracker))
        return FitResult(run_dir, 0, metrics, tracker.history)

    finished = start_epoch - 1  # the last epoch whose state is saved
    try:
        for epoch in range(start_epoch, config.train.num_epochs + 1):
            seed_epoch(session, epoch)
            metrics = train_one_epoch(session, epoch, progress)
            evaluation = evaluate_session(session, progress)
            metrics.update(evaluation.metrics)
            result = EpochResult(epoch, metrics, tracker.update(epoch, metrics), decisions, run_dir, tracker.best_epoch,
                                 tracker.best_metrics)
            _record(run_dir, session, result, tracker, evaluation)
            if write_last:
                with writing(run_dir):
                    save_training_state(run_dir, session, epoch, tracker, filename=LAST_FILE)
            finished = epoch
            stop = None
            if on_epoch_end is not None:
                stop = on_epoch_end(result, lambda folder: save_training_state(Path(folder), session, epoch, tracker))
            if stop:
                break
    except KeyboardInterrupt:
        raise RunInterrupted(run_dir, finished if write_last else 0) from None
    return FitResult(run_dir, tracker.best_epoch, tracker.best_metrics, tracker.history)


def _remove_if_empty(run_dir: Path) -> None:
    """Undo create_run_dir when the run could not start (bad data, say): only an empty folder goes."""
    try:
        run_dir.rmdir()
    except OSError:
        pass


def train_one_epoch(session: TrainingSession, epoch: int, progress: bool) -> dict[str, float]:
    model, device, opt = session.model, session.device, session.optimizer
    model.train()
    loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
    lr = opt.param_groups[0]["lr"]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    batches = tqdm(session.train_loader, desc=f"epoch {epoch}", disable=not progress, leave=False)
    step_fn = branch_parallel_step if session.branch_parallel else training_step
    for step, (images, targets) in enumerate(batches, start=1):
        images = to_device_batch(images, device, session.plan.channels_last)
        targets = targets.to(device, non_blocking=True)  # (b, m) meta-class of each image per branch (of this block)
        try:
            loss, logits = step_fn(session.train_model, images, targets, opt, session.plan.bf16)
        except torch.cuda.OutOfMemoryError:
            if not start_checkpointing_after_oom(session):
                raise
            loss, logits = step_fn(session.train_model, images, targets, opt, session.plan.bf16)
        loss_sum += loss * images.shape[0]
        hits = (logits.argmax(-1) == targets).float()  # (b, branches here)
        correct += hits.sum(1).sum() / model.whole_size if session.branch_parallel else hits.mean(1).sum()
        seen += images.shape[0]
        if step % _NONFINITE_CHECK_STEPS == 0:
            _check_finite(loss_sum, epoch, lr)
    _check_finite(loss_sum, epoch, lr)
    session.scheduler.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if session.branch_parallel:  # each block's share of the branches' accuracy, and the slowest block's time
        correct = torch.as_tensor(sum(every(correct.item())))
        seconds = max(every(seconds))
    return {
        "loss": (loss_sum / max(seen, 1)).item(),
        "branch_accuracy": (correct / max(seen, 1)).item(),
        "images_per_s": seen / seconds,
        "epoch_seconds": seconds,
        "lr": lr,
    }


def _check_finite(loss_sum: torch.Tensor, epoch: int, lr: float) -> None:
    """A NaN or infinite loss ends the run: every later step would only spread it through the weights."""
    value = loss_sum.item()
    if not math.isfinite(value):
        raise NonFiniteLossError(f"epoch {epoch}: the training loss became {value} (training diverged); lower --lr "
                                 f"(it was {lr:g}); the run folder keeps the epochs before this one")


@dataclass
class Evaluation:
    metrics: dict[str, float]  # val_* (held-out training classes) and test_* retrieval metrics
    test_query: Embeddings | None  # the whole ensemble's: None on processes other than 0 of a group
    test_gallery: Embeddings | None


def start_checkpointing_after_oom(session: TrainingSession) -> bool:
    """Where the plan says so (activation_checkpointing left to auto), a step that runs out of GPU memory
    turns checkpointing on (ResNet50 x 48 at batch 32 needs 62 GiB without it, 32 GiB with it on an
    H100) and is retried; returns False where there is nothing left to turn on."""
    if not session.plan.checkpoint_after_oom or session.model.grad_checkpointing:
        return False
    session.model.set_grad_checkpointing(True)
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
        if session.branch_parallel:  # the blocks' embeddings side by side, in branch order, on process 0
            query, gallery = _whole_embeddings(query), _whole_embeddings(gallery)
        scores = {}
        if query is not None:
            scores = score(query, session.config.eval.recalls, gallery, device=session.device,
                           chunk_size=session.config.eval.chunk_size)
        metrics.update({f"{prefix}_{k}": v for k, v in broadcast(scores).items()})
    metrics["eval_seconds"] = broadcast(time.perf_counter() - start)
    return Evaluation(metrics, query, gallery)


def _whole_embeddings(block: Embeddings | None) -> Embeddings | None:
    """The whole ensemble's embeddings from every process's block of them, on process 0 (None elsewhere)."""
    if block is None:
        return None
    blocks = gather(block.features)
    if blocks is None:
        return None
    return Embeddings(torch.cat(blocks, dim=1), block.labels, block.paths)


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


def _record(run_dir: Path, session: TrainingSession, result: EpochResult, tracker: BestTracker,
            evaluation: Evaluation) -> None:
    """Rewrite the per-epoch CSV; on a new best, the best weights and the test feature database (process 0 of a
    group, the others giving it their branches' weights)."""
    weights = whole_model_state(session.model) if result.is_best else None
    if rank() != 0:
        return
    with writing(run_dir):
        _write_epoch_files(run_dir, session, result, tracker, evaluation, weights)


def _write_epoch_files(run_dir: Path, session: TrainingSession, result: EpochResult, tracker: BestTracker,
                       evaluation: Evaluation, weights: dict[str, torch.Tensor] | None) -> None:
    write_text(run_dir / EPOCHS_FILE, _history_csv(tracker.history))
    if not result.is_best:
        return
    torch_save(run_dir / BEST_FILE, {
        "epoch": result.epoch,
        "model": weights,
        "meta_ids": torch.as_tensor(session.meta_ids),
        "metrics": result.metrics,
        "config": session.config.to_flat(),
        DECISIONS_KEY: session.decisions.as_dict(),
    })
    arrays = embeddings_arrays("query", evaluation.test_query)
    if evaluation.test_gallery is not None:
        arrays.update(embeddings_arrays("gallery", evaluation.test_gallery))
    save_npz(run_dir / FEATURES_FILE, **arrays)
    _write_retrievals(run_dir, session, result, evaluation)


def _write_retrievals(run_dir: Path, session: TrainingSession, result: EpochResult, evaluation: Evaluation) -> None:
    """The best epoch's retrieval grid: 8 test queries (chosen by the run's seed) and their top 8."""
    k = session.config.eval.recalls[0]
    epoch = f"epoch {result.epoch}" if result.epoch else "untrained"
    title = f"{run_dir.name} · {epoch} · test Recall@{k} {result.metrics[f'test_{recall_key(k)}']:.1%}"
    boxes = {f"{name}_boxes": [r.box for r in loader.dataset.records] if loader is not None and loader.dataset.crop else None
             for name, loader in (("query", session.test.query), ("gallery", session.test.gallery))}
    rows = grid_rows_from_embeddings(evaluation.test_query, evaluation.test_gallery, session.image_root,
                                     ensemble_size=session.config.model.ensemble_size, seed=session.config.train.seed,
                                     class_names=session.index.class_names, **boxes)
    write_grid(run_dir / RETRIEVALS_FILE, rows, title=title)


def _history_csv(history: list[dict[str, float]]) -> str:
    columns = list(dict.fromkeys(key for row in history for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()
