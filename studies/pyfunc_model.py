"""A trained ensemble as an MLflow pyfunc model: images in, embeddings out.

The model's one artifact is the checkpoint (best.pt: weights, meta-class ids, config); loading it is
`antimetric.load`. Input is a DataFrame with one image per row, in an `image` column (the encoded file's
bytes; base64 in a JSON request to `mlflow models serve`) or a `path` column (a file the serving process
can read). In Python a row may give either (its `image` wins when it has both); a JSON request gives one
of the two columns for all its rows, since MLflow's server cannot decode a null in a binary column. Output is the (rows, ensemble_size * branch_dim) float32 embeddings, each branch's part
L2-normalised, as `TrainedEnsemble.embed` gives them.

The wrapper class is pickled by reference: serving needs antimetric installed in the serving environment
(`mlflow models serve ... --env-manager local`, in this project's .venv).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, DataType, Schema, TensorSpec
from PIL import Image

from antimetric.errors import AntimetricError
from antimetric.trained import TrainedEnsemble, load

IMAGE, PATH = "image", "path"  # the input columns
CHECKPOINT = "checkpoint"  # the artifact's key
EXAMPLE_SIZE = 64  # pixels of the input example's image


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """`predict(DataFrame of images) -> (rows, D) float32 embeddings`, from the checkpoint artifact."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.ensemble: TrainedEnsemble = load(context.artifacts[CHECKPOINT])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        images = row_images(model_input)
        try:
            return self.ensemble.embed(images).numpy()
        except AntimetricError as error:  # an unreadable image: the request's fault (HTTP 400), not the server's
            raise MlflowException(str(error), INVALID_PARAMETER_VALUE) from None


def row_images(frame: pd.DataFrame) -> list[bytes | str]:
    """Each row's image: its `image` bytes, else its `path`."""
    if IMAGE not in frame.columns and PATH not in frame.columns:
        raise MlflowException(f"give the images in a column `{IMAGE}` (encoded file bytes; base64 in JSON) or "
                              f"`{PATH}` (file paths)", INVALID_PARAMETER_VALUE)
    images: list[bytes | str] = []
    for number, row in enumerate(frame.itertuples(index=False)):
        values = row._asdict()
        data, path = values.get(IMAGE), values.get(PATH)
        if isinstance(data, (bytes, bytearray)) and data:
            images.append(bytes(data))
        elif isinstance(path, (str, Path)) and str(path):
            images.append(str(path))
        else:
            raise MlflowException(f"row {number} has neither `{IMAGE}` bytes nor a `{PATH}`", INVALID_PARAMETER_VALUE)
    return images


def signature(embedding_dim: int) -> ModelSignature:
    """Two optional input columns (one image per row, as bytes or a path), and the embeddings."""
    inputs = Schema([ColSpec(DataType.binary, IMAGE, required=False), ColSpec(DataType.string, PATH, required=False)])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, embedding_dim))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example() -> pd.DataFrame:
    """One image as PNG bytes: a grey ramp, the same on every machine (a dataset image may not be there)."""
    ramp = np.linspace(0, 255, EXAMPLE_SIZE, dtype=np.uint8)
    pixels = np.stack([np.add.outer(ramp, ramp) // 2, np.tile(ramp, (EXAMPLE_SIZE, 1)),
                       np.tile(ramp[:, None], (1, EXAMPLE_SIZE))], axis=-1).astype(np.uint8)  # (h, w, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return pd.DataFrame({IMAGE: [buffer.getvalue()]})
