"""A trained ensemble, ready to embed images: `antimetric.load(SOURCE)`.

Everything needed travels in the checkpoint (best.pt, last.pt or a study's state.pt): the run's flat
config, the meta-class ids and the weights. The network is rebuilt from the config (no download of
ImageNet weights: the checkpoint replaces them), in the weight layout the checkpoint holds, and images
go through the run's own test transform.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from antimetric.base.extensions import MODEL_SOURCE, extension
from antimetric.data.images import ImageInput, as_rgb
from antimetric.data.transforms import test_transform
from antimetric.errors import ConfigError
from antimetric.model import cost
from antimetric.model.device_plan import plan_for, to_device_batch
from antimetric.model.ensemble import EnsembleNet, build_model
from antimetric.training.checkpoints import check_trained_state, read_torch_file
from antimetric.training.config import RunConfig
from antimetric.training.decisions import StartDecisions
from antimetric.training.memory_estimate import check_memory
from antimetric.training.run_folder import BEST_FILE
from antimetric.training.session import pick_device
from antimetric.training.state import STATE_FILE, weight_layout

__all__ = ["TrainedEnsemble", "checkpoint_file", "load"]

# A model kept in MLflow: a models:/ or runs:/ URI, or a run id (32 hex digits).
_MLFLOW_SOURCE = re.compile(r"^(models:/|runs:/|[0-9a-f]{32}$)")
DEFAULT_BATCH_SIZE = 64


@dataclass
class TrainedEnsemble:
    """A trained ensemble in eval mode on `device`, with the run's config and test transform."""

    model: EnsembleNet
    config: RunConfig
    meta_ids: np.ndarray  # (ensemble_size, n_train_classes)
    device: torch.device
    checkpoint: Path  # the file the weights came from
    source: str  # as the caller named it (a path, an MLflow run id, a models:/ URI)
    decisions: StartDecisions  # how it runs here: device, precision, the network its weights are laid out for
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # the checkpoint epoch's, as training reported them

    @property
    def transform(self):
        data = self.config.data
        return test_transform((data.mean, data.std), data.crop_type, data.image_size)

    @property
    def ensemble_size(self) -> int:
        return self.config.model.ensemble_size

    @property
    def branch_dim(self) -> int:
        """Each branch's output width: the meta-class count with a head, else the pooled feature's."""
        return cost.branch_dim(self.config.model)

    @property
    def embedding_dim(self) -> int:
        return self.ensemble_size * self.branch_dim

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """One image as the network's input (3, h, w): decoded to RGB, then the run's test transform.
        Cropped runs saw box-cropped images; give those already cropped."""
        return self.transform(as_rgb(image))

    @torch.no_grad()
    def embed_tensor(self, batch: torch.Tensor, per_branch: bool = False) -> torch.Tensor:
        """Embeddings of preprocessed images (b, 3, h, w): (b, m*d), or (b, m, d) with per_branch; float32
        on the CPU. Each branch's part is L2-normalised (the concatenation has norm sqrt(m))."""
        return self.model.embed(to_device_batch(batch, self.device, self.model.plan.channels_last), per_branch).cpu()

    def embed(self, images: ImageInput | Iterable[ImageInput], *, batch_size: int = DEFAULT_BATCH_SIZE,
              per_branch: bool = False, progress: bool = False) -> torch.Tensor:
        """Embeddings of images (paths, bytes, PIL images or tensors: see data.images.ImageInput; a tensor
        (b, c, h, w) is b images), in batches, in their order: (n, m*d), or (n, m, d) with per_branch; float32 on
        the CPU."""
        from tqdm import tqdm

        items = _image_list(images)
        chunks = []
        for start in tqdm(range(0, len(items), batch_size), desc="embed", disable=not progress, leave=False):
            batch = torch.stack([self.preprocess(item) for item in items[start:start + batch_size]])
            chunks.append(self.embed_tensor(batch, per_branch))
        if not chunks:
            shape = (0, self.ensemble_size, self.branch_dim) if per_branch else (0, self.embedding_dim)
            return torch.zeros(shape)
        return torch.cat(chunks)

    def describe(self) -> dict[str, Any]:
        """What identifies these embeddings: the source, the checkpoint epoch, the config that made them."""
        return {"source": self.source, "checkpoint": str(self.checkpoint), "epoch": self.epoch,
                "embedding_dim": self.embedding_dim, "config": self.config.to_flat(),
                "decisions": self.decisions.as_dict()}


def load(source: str | Path, *, device: str = "auto", tracking_uri: str | None = None) -> TrainedEnsemble:
    """A trained ensemble from SOURCE: a run folder (its best.pt), a checkpoint file (best.pt, last.pt,
    state.pt) or a study checkpoint folder, an MLflow run id (its best checkpoint) or a `models:/NAME/VERSION`
    URI (MLflow sources need the studies extras; `tracking_uri` defaults to MLflow's own resolution, then
    the studies' store mlruns/mlflow.db)."""
    path = checkpoint_file(source, tracking_uri)
    state, config, decided = read_checkpoint(path)  # checked whole, its config resolved with a run's bounds and types
    torch_device = pick_device(device)
    layout = weight_layout(state["model"])
    trained_in = decided.get("precision", config.train.precision)
    plan = plan_for(torch_device, layout, precision=trained_in, backbone=config.model.backbone)
    check_memory(config, torch_device, training=False, plan=plan)
    with torch_device:
        model = build_model(config.model, layout)
    model.load_state_dict(state["model"])
    model.configure(plan)
    model.eval()
    decisions = StartDecisions(device=str(torch_device), precision="bf16" if plan.bf16 else "fp32",
                               implementation=layout)
    epoch = int(state.get("epoch", 0))
    return TrainedEnsemble(model, config, state["meta_ids"].cpu().numpy(), torch_device, path, str(source), decisions,
                           epoch, _checkpoint_metrics(state, epoch))


def checkpoint_file(source: str | Path, tracking_uri: str | None = None) -> Path:
    """The local checkpoint file that SOURCE names (an MLflow source is downloaded first)."""
    path = Path(source)
    if path.is_dir():
        for name in (BEST_FILE, STATE_FILE):
            if (path / name).is_file():
                return path / name
        raise ConfigError(f"{path} holds no {BEST_FILE}: pass a run folder that finished an epoch, or a checkpoint file")
    if path.is_file():
        return path
    if path.exists():
        raise ConfigError(f"{path} is not a regular file (a pipe or a device?); pass a run folder or a checkpoint file")
    text = str(source)
    if _MLFLOW_SOURCE.match(text):
        resolve = extension(MODEL_SOURCE, f"reading the model {text} from MLflow")
        return Path(resolve(text, tracking_uri))
    raise ConfigError(f"no run folder or checkpoint at {text}; pass a run folder, a best.pt/last.pt, an MLflow run id "
                      "or models:/NAME/VERSION")


def read_checkpoint(path: Path) -> tuple[dict[str, Any], RunConfig, dict[str, Any]]:
    """A checkpoint's contents, read without unpickling code (weights_only) and checked whole (a damaged
    file is one ConfigError naming it: antimetric.training.checkpoints), with its resolved config and its run's
    decisions."""
    state = read_torch_file(path)
    config, decided = check_trained_state(state, path)
    return state, config, decided


def _checkpoint_metrics(state: dict[str, Any], epoch: int) -> dict[str, float]:
    if "metrics" in state:  # best.pt
        return dict(state["metrics"])
    history = (state.get("tracker") or {}).get("history") or []  # last.pt, state.pt
    row = next((row for row in history if row.get("epoch") == epoch), {})
    return {key: value for key, value in row.items() if key != "epoch"}


def _image_list(images: ImageInput | Iterable[ImageInput]) -> Sequence[ImageInput]:
    if isinstance(images, (str, Path, bytes, bytearray, memoryview, Image.Image)):
        return [images]
    if isinstance(images, torch.Tensor):
        return list(images) if images.dim() == 4 else [images]
    return list(images)
