"""antimetric: randomized-ensemble metric learning for image retrieval."""
from antimetric.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig, resolve
from antimetric.errors import AntimetricError, ConfigError, DatasetLayoutError
from antimetric.evaluate import recall_at_k, retrieval_metrics
from antimetric.model import EnsembleNet, build_model
from antimetric.train import EpochResult, FitResult, fit

__version__ = "0.1.0"

__all__ = [
    "AntimetricError", "ConfigError", "DataConfig", "DatasetLayoutError", "EnsembleNet", "EpochResult", "EvalConfig",
    "FitResult", "ModelConfig", "RunConfig", "TrainConfig", "build_model", "fit", "recall_at_k", "resolve",
    "retrieval_metrics",
]
