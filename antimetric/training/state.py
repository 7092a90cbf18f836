"""What a run needs to continue after an epoch: weights, optimiser, schedule, best-so-far, and seeds.

A resumed run repeats the uninterrupted one exactly because every epoch draws its randomness
(shuffling, augmentation, the random branch weights) from seeds derived from (seed, epoch), set
at the start of the epoch (`seed_epoch`), not from generator states carried over from the epoch
before. The saved state therefore holds no generator state: the epoch number and the run's seed
determine the rest, also for data-loader worker processes, which are started anew each epoch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from antimetric.base.atomic import torch_save
from antimetric.errors import ConfigError
from antimetric.training.checkpoints import (
    RESUME_KEYS,
    check_trained_state,
    damaged,
    read_torch_file,
    weight_layout,
    weights_mismatch,
)
from antimetric.training.decisions import DECISIONS_KEY
from antimetric.training.parallel.distributed import rank
from antimetric.training.parallel.whole_state import (
    block_model_state,
    block_optimizer_state,
    whole_model_state,
    whole_optimizer_state,
)
from antimetric.training.session import TrainingSession

STATE_FILE = "state.pt"  # a resumable state in a checkpoint folder (a run folder keeps last.pt)


class BestTracker:
    """The history of epoch metrics and the best epoch by one key (higher is better)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.best_epoch = -1
        self.best_value = -np.inf
        self.best_metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []

    def update(self, epoch: int, metrics: dict[str, float]) -> bool:
        self.history.append({"epoch": epoch, **metrics})
        if metrics[self.key] > self.best_value:  # a NaN never wins
            self.best_epoch, self.best_value, self.best_metrics = epoch, metrics[self.key], dict(metrics)
            return True
        return False

    def state_dict(self) -> dict:
        return {"key": self.key, "best_epoch": self.best_epoch, "best_value": float(self.best_value),
                "best_metrics": self.best_metrics, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.key, self.best_epoch, self.best_value = state["key"], state["best_epoch"], state["best_value"]
        self.best_metrics, self.history = dict(state["best_metrics"]), list(state["history"])


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for one epoch of a run, independent of every other epoch's."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def seed_epoch(session: TrainingSession, epoch: int) -> None:
    """Seed everything an epoch draws from: torch's generators (random branch weights; augmentation
    in the main process) and the training loader's (order, and the seeds of its worker processes)."""
    seed = epoch_seed(session.config.train.seed, epoch)
    torch.manual_seed(seed)
    session.train_loader.generator.manual_seed(seed)


def save_training_state(folder: Path, session: TrainingSession, epoch: int, tracker: BestTracker,
                        filename: str = STATE_FILE) -> Path:
    """Everything needed to resume after `epoch`, readable with torch.load(weights_only=True). In a group of
    processes every one must call it: process 0 writes the whole ensemble's state, as one process would."""
    path = Path(folder) / filename
    model, optimizer = whole_model_state(session.model), whole_optimizer_state(session.model, session.optimizer)
    if rank() != 0:
        return path
    torch_save(path, {
        "epoch": epoch,
        "model": model,
        "optimizer": optimizer,
        "scheduler": session.scheduler.state_dict(),
        "meta_ids": torch.as_tensor(session.meta_ids),
        "tracker": tracker.state_dict(),
        "config": session.config.to_flat(),
        DECISIONS_KEY: session.decisions.as_dict(),
    })
    return path


def load_training_state(path: Path, session: TrainingSession, tracker: BestTracker) -> int:
    """Restore a state saved by save_training_state (a file or the folder holding state.pt); returns its epoch.
    A damaged state is one ConfigError naming the file (antimetric.training.checkpoints), before anything is restored.
    A process holding a block of branches takes its block of the state, on any number of processes."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    state = read_torch_file(path, "training state", map_location=session.device)
    check_trained_state(state, path)
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise damaged(path, f"it has no {', '.join(missing)} to resume from")
    if not np.array_equal(state["meta_ids"].cpu().numpy(), session.meta_ids):
        raise ConfigError(f"{path} was trained with other meta-class ids than this run")
    saved, wanted = weight_layout(state["model"]), weight_layout(session.model.state_dict())
    if saved != wanted:
        raise ConfigError(f"{path} holds weights in the {saved} layout and this run builds the {wanted} one; "
                          f"resume it with --implementation {saved}")
    if session.branch_parallel and saved != "batched":
        raise ConfigError(f"{path} holds weights in the {saved} layout; a run on several processes trains the "
                          "batched one (resume it on one process)")
    weights = block_model_state(state["model"], session.model)
    mismatch = weights_mismatch(session.model.state_dict(), weights)
    if mismatch:
        raise ConfigError(f"{path} holds weights of another network than this run's ({mismatch})")
    session.model.load_state_dict(weights)
    for part, cut in (("optimizer", block_optimizer_state), ("scheduler", lambda value, _: value)):
        try:
            getattr(session, part).load_state_dict(cut(state[part], session.model))
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError, AttributeError):
            raise damaged(path, f"its {part} state does not fit this run's {part}") from None
    tracker.load_state_dict(state["tracker"])
    return state["epoch"]
