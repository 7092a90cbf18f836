"""A trained ensemble as an MLflow pyfunc model: images in, embeddings out.

The model's one artifact is the checkpoint (best.pt: weights, meta-class ids, config); loading it is
`antimetric.load`. Input is a DataFrame with one image per row, in an `image` column (the encoded file's
bytes; base64 in a JSON request to `mlflow models serve`) or a `path` column. In Python a row may give either
(its `image` wins when it has both); a JSON request gives one of the two columns for all its rows, since
MLflow's server cannot decode a null in a binary column. Output is the (rows, ensemble_size * branch_dim)
float32 embeddings, each branch's part L2-normalised, as `TrainedEnsemble.embed` gives them.

The model reads only what it is sent. Paths are refused unless the model is loaded with an `image_root`
(MLflow's model_config: `load_model(uri, model_config={"image_root": FOLDER})`, or SERVING_MODEL_CONFIG for
`mlflow models serve`), and then only regular files whose real path is inside that folder; a path outside it
gets the same answer whether or not it exists. Every image is decoded within data.images' bounds on bytes
and pixels and within `decode_timeout_s`, in a thread of its own so that a slow decode never holds a server
worker. Every error is one line; an error of the model itself logs its trace on the server, not to the client.

The wrapper class is pickled by reference: serving needs antimetric installed in the serving environment
(`mlflow models serve ... --env-manager local`, in this project's .venv).
"""
from __future__ import annotations

import io
import logging
import os
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, DataType, Schema, TensorSpec
from PIL import Image

from antimetric.data.images import MAX_BYTES, decode_rgb, open_rgb
from antimetric.errors import AntimetricError, ConfigError
from antimetric.retrieval.trained import TrainedEnsemble, load

IMAGE, PATH = "image", "path"  # the input columns
CHECKPOINT = "checkpoint"  # the artifact's key
EXAMPLE_SIZE = 64  # pixels of the input example's image
IMAGE_ROOT, MAX_IMAGE_BYTES, DECODE_TIMEOUT_S = "image_root", "max_image_bytes", "decode_timeout_s"
# What the served model needs (pinned to what made it); antimetric itself must be installed beside them.
REQUIREMENTS = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow")
# The model's settings, logged with it (MLflow accepts at load only the keys a model was logged with).
MODEL_CONFIG = {IMAGE_ROOT: None, MAX_IMAGE_BYTES: MAX_BYTES, DECODE_TIMEOUT_S: 10.0}

_log = logging.getLogger(__name__)


class RequestError(MlflowException):
    """A one-line error for the client. MLflow's server rewrites the message of any error of predict as
    `Failed to predict data '<the whole input>'. \\nError: ...` (lines echoing the request back); this one
    keeps the line it was made with."""

    def __init__(self, message: str, error_code: int = INVALID_PARAMETER_VALUE) -> None:
        super().__init__(" ".join(message.split()), error_code)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_line"):  # the constructor's; MLflow's rewrite is ignored
            self._line = value


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """`predict(DataFrame of images) -> (rows, D) float32 embeddings`, from the checkpoint artifact."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        config = {**MODEL_CONFIG, **(context.model_config or {})}
        self.image_root = image_root(config[IMAGE_ROOT])
        self.max_image_bytes, self.decode_timeout_s = int(config[MAX_IMAGE_BYTES]), float(config[DECODE_TIMEOUT_S])
        self.ensemble: TrainedEnsemble = load(context.artifacts[CHECKPOINT])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        try:
            images = [self.decode(number, source) for number, source in enumerate(row_images(model_input))]
            return self.ensemble.embed(images).numpy()
        except RequestError:
            raise
        except AntimetricError as error:
            raise RequestError(str(error)) from None
        except Exception:  # the model's fault, not the request's: its trace goes to the server's log only
            _log.exception("embedding a request's images failed")
            raise RequestError("the model failed to embed the images (the server's log has the details)",
                               INTERNAL_ERROR) from None

    def decode(self, number: int, source: bytes | str) -> Image.Image:
        """Row `number`'s image, decoded in its own thread within the byte, pixel and time bounds."""
        if isinstance(source, str):
            path = self.allowed_path(number, source)
            shown, read = source, lambda: open_rgb(path, max_bytes=self.max_image_bytes)
        else:
            shown, read = "bytes", lambda: decode_rgb(source, max_bytes=self.max_image_bytes)
        try:
            return _with_deadline(read, self.decode_timeout_s)
        except TimeoutError:
            raise RequestError(f"row {number}: decoding the image {shown} took over {self.decode_timeout_s:g} s; "
                               "send a smaller image") from None
        except (OSError, ValueError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise RequestError(f"row {number}: cannot read the image {shown} ({reason})") from None

    def allowed_path(self, number: int, path: str) -> str:
        """The real path of a `path` under the image root (relative paths are taken from it)."""
        if self.image_root is None:
            raise RequestError(f"row {number}: this model reads no files; send the image's bytes in the column "
                               f"`{IMAGE}`, or load it with an `{IMAGE_ROOT}` to read files under that folder")
        try:
            real = os.path.realpath(os.path.join(self.image_root, path))
        except ValueError:  # a NUL byte
            real = ""
        if not real or os.path.commonpath([self.image_root, real]) != self.image_root:
            raise RequestError(f"row {number}: {path} is outside the folder this model reads images from; send the "
                               f"image's bytes in the column `{IMAGE}`")
        return real


def image_root(folder: str | os.PathLike[str] | None) -> str | None:
    """The real path of the folder a model reads image files from, or None: it reads none."""
    if folder is None or str(folder) == "":
        return None
    real = os.path.realpath(os.path.expanduser(str(folder)))
    if not os.path.isdir(real):
        raise ConfigError(f"the model's {IMAGE_ROOT} {folder} is not a folder; name the folder of the images it "
                          "may read, or none to take image bytes only")
    return real


def _with_deadline(work: Callable[[], Image.Image], timeout_s: float) -> Image.Image:
    """work() in a daemon thread, waited for at most timeout_s (TimeoutError): a decode that hangs or crawls
    costs that thread until it ends (the byte and pixel bounds bound it), never the caller's."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append((True, work()))
        except Exception as error:
            outcome.append((False, error))

    thread = threading.Thread(target=run, name="antimetric-decode", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise TimeoutError
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def row_images(frame: pd.DataFrame) -> list[bytes | str]:
    """Each row's image: its `image` bytes, else its `path`."""
    if IMAGE not in frame.columns and PATH not in frame.columns:
        raise RequestError(f"give the images in a column `{IMAGE}` (encoded file bytes; base64 in JSON) or "
                           f"`{PATH}` (file paths)")
    images: list[bytes | str] = []
    for number, row in enumerate(frame.itertuples(index=False)):
        values = row._asdict()
        data, path = values.get(IMAGE), values.get(PATH)
        if isinstance(data, (bytes, bytearray)) and data:
            images.append(bytes(data))
        elif isinstance(path, (str, Path)) and str(path):
            images.append(str(path))
        else:
            raise RequestError(f"row {number} has neither `{IMAGE}` bytes nor a `{PATH}`")
    return images


def save(folder: Path, checkpoint: Path, embedding_dim: int) -> None:
    """Write the pyfunc model of a checkpoint to `folder` (log_model takes the same model_arguments)."""
    mlflow.pyfunc.save_model(folder, **model_arguments(checkpoint, embedding_dim))


def model_arguments(checkpoint: Path, embedding_dim: int) -> dict[str, Any]:
    """The pyfunc model of a checkpoint, as save_model's and log_model's arguments: the wrapper, the checkpoint
    as its one artifact, its signature, input example, settings and pip requirements."""
    return {"python_model": EnsembleModel(), "artifacts": {CHECKPOINT: str(checkpoint)},
            "signature": signature(embedding_dim), "input_example": input_example(), "model_config": MODEL_CONFIG,
            "pip_requirements": requirements()}


def requirements() -> list[str]:
    """The served model's pip requirements, at the versions installed here (a local build's +cpu dropped)."""
    pinned = []
    for package in REQUIREMENTS:
        try:
            pinned.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pinned.append(package)
    return pinned


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
