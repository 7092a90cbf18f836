"""antimetric: randomized-ensemble metric learning for image retrieval.

The public names below are imported on first use, so that `import antimetric.model` needs
torch and torchvision only, and reading the settings no torch (the throughput benchmark runs on machines with nothing else).
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "AntimetricError": "antimetric.errors", "ConfigError": "antimetric.errors",
    "DatasetLayoutError": "antimetric.errors",
    "DataConfig": "antimetric.data.settings", "EvalConfig": "antimetric.evaluation.settings",
    "ModelConfig": "antimetric.model.settings", "RunConfig": "antimetric.training.config",
    "TrainConfig": "antimetric.training.config", "resolve": "antimetric.training.config",
    "EnsembleNet": "antimetric.model.ensemble", "build_model": "antimetric.model.ensemble",
    "recall_at_k": "antimetric.evaluation.metrics", "retrieval_metrics": "antimetric.evaluation.metrics",
    "TrainedEnsemble": "antimetric.retrieval.trained", "load": "antimetric.retrieval.trained",
    "EpochResult": "antimetric.training.loop", "FitResult": "antimetric.training.loop", "fit": "antimetric.training.loop",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'antimetric' has no attribute {name!r}")
