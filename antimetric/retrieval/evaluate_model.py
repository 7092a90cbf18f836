"""`evaluate`: the retrieval metrics of a saved ensemble on a dataset's test split, computed as training does."""
from __future__ import annotations

from pathlib import Path

from antimetric.data.loading import eval_loaders, image_source, load_index, num_workers
from antimetric.data.splits import test_set
from antimetric.data.table import TABLE
from antimetric.data.transforms import test_transform
from antimetric.errors import ConfigError
from antimetric.evaluation.embed import embed, score, score_per_category
from antimetric.retrieval.trained import TrainedEnsemble
from antimetric.training.config import RunConfig, resolve


def trained_data_path(ensemble: TrainedEnsemble) -> Path:
    """The data folder the ensemble was trained on. A relative data_path is relative to the folder `train` ran
    in, which a run folder's place gives (<there>/<output_dir>/<run_name>); elsewhere (a checkpoint moved
    out of its run folder, an MLflow download) it is taken from the current folder only when the dataset is
    there, so that no demo is generated in a folder nobody named."""
    config = ensemble.config
    data_path, output_dir = Path(config.data.data_path), Path(config.output_dir)
    if data_path.is_absolute() or config.data.data is not None:  # a user's own data is recorded absolute
        return data_path
    run_dir = ensemble.checkpoint.resolve().parent
    depth = len(output_dir.parts)
    if not output_dir.is_absolute() and ".." not in output_dir.parts and run_dir.name == config.run_name \
            and run_dir.parent.parts[len(run_dir.parent.parts) - depth:] == output_dir.parts:
        return run_dir.parents[depth] / data_path
    if (data_path / config.data.data_name).is_dir():
        return data_path
    raise ConfigError(f"the model was trained on data in {data_path}, relative to a folder unknown here "
                      f"(its checkpoint is outside its run folder); pass --data-path")


def evaluation_config(ensemble: TrainedEnsemble, data_path: Path | None, data_name: str | None = None,
                      crop_type: str | None = None, data: str | None = None) -> RunConfig:
    """The ensemble's own config pointed at another data folder, dataset (`data_name`) or a user's own folder or
    table (`data`). Crop type: the ensemble's own where the data has boxes; Recall@K: the ensemble's own on its
    own data, else the other data's; the normalisation stays the network's own, whatever data it looks at."""
    trained = ensemble.config
    if data is not None:
        target = {"data": data, "data_path": None if data_path is None else str(data_path)}
    elif data_name is not None:
        target = {"data": None, "data_name": data_name, "data_path": str(data_path)}
    else:
        target = {"data_path": str(data_path)}
    flat = {**trained.to_flat(), **target}
    same = _dataset(flat["data"], flat["data_name"]) == _dataset(trained.data.data, trained.data.data_name)
    has_boxes = flat["data"] is not None or (flat["data_name"] in TABLE and TABLE[flat["data_name"]].has_boxes)  # a table may: load_index checks
    if crop_type is None:
        crop_type = trained.data.crop_type if same and has_boxes else "uncropped"
    if not same:
        flat["recalls"] = None if flat["data"] is not None else TABLE[flat["data_name"]].recalls
    return resolve(RunConfig.from_flat({**flat, "crop_type": crop_type}))


def _dataset(data: str | None, data_name: str) -> str:
    """What names a dataset: a user's folder or table by its absolute path, a benchmark by its name."""
    return str(Path(data).expanduser().absolute()) if data is not None else data_name


def evaluate_model(ensemble: TrainedEnsemble, data_path: Path | None, data_name: str | None = None,
                   crop_type: str | None = None, *, data: str | None = None,
                   progress: bool = False) -> dict[str, float]:
    """test_* Recall@K, MAP@R and R-precision, equal to what training reported for the checkpoint's epoch
    (same images, transform, batches and search) when run on the data it was trained on; for a table with a
    `category` column, each also per category (`test_recall_at_1/<category>`)."""
    config = evaluation_config(ensemble, data_path, data_name, crop_type, data)
    index = load_index(config.data, progress)
    test = test_set(index)
    image_root, crop = image_source(config.data, index, progress)
    # the network's own normalisation, whatever dataset it now looks at
    own = ensemble.config.data
    transform = test_transform((own.mean, own.std), config.data.crop_type, config.data.image_size)
    loaders = eval_loaders(test, image_root, transform, crop, config.eval.eval_batch_size, num_workers(None),
                           ensemble.device)
    query = embed(ensemble.model, loaders.query, ensemble.device, progress=progress, desc="embed test")
    gallery = None
    if loaders.gallery is not None:
        gallery = embed(ensemble.model, loaders.gallery, ensemble.device, progress=progress, desc="embed gallery")
    scores = score(query, config.eval.recalls, gallery, device=ensemble.device, chunk_size=config.eval.chunk_size)
    metrics = {f"test_{key}": value for key, value in scores.items()}
    if any(record.category is not None for record in test.query):  # a table's categories, each on its own
        per_category = score_per_category(
            query, [r.category for r in test.query], config.eval.recalls, gallery,
            [r.category for r in test.gallery] if test.gallery is not None else None,
            device=ensemble.device, chunk_size=config.eval.chunk_size)
        for category, values in per_category.items():
            metrics.update({f"test_{key}/{category}": value for key, value in values.items()})
    return metrics
