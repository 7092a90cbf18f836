"""`mlflow models serve` of the smoke study's registered model answers on 127.0.0.1 with the embeddings that
`antimetric.load` gives."""
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import antimetric
from studies.registry import model_name

pytestmark = pytest.mark.slow  # the session's smoke study and an `mlflow models serve` subprocess

STARTUP_TIMEOUT_S = 90  # the server imports MLflow, torch and the model; minutes on a loaded 2-core machine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _wait_until_up(server: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow models serve did not answer /ping in {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def test_served_model_answers_with_embeddings(smoke_study, demo_data_path, tmp_path):
    uri = smoke_study.dirs["tracking_uri"]
    model_uri = f"models:/{model_name('t')}/1"
    images = sorted((demo_data_path / "demo").rglob("*.jpg"))[:2]
    expected = antimetric.load(model_uri, device="cpu", tracking_uri=uri).embed(images).numpy()
    port, log = _free_port(), tmp_path / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # its uvicorn
    with log.open("w") as output:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                                   "local", "--host", "127.0.0.1", "--port", str(port)], stdout=output,
                                  stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    try:
        _wait_until_up(server, port, log)
        encoded = base64.b64encode(images[0].read_bytes()).decode("ascii")
        status, answer = _post(port, {"dataframe_split": {"columns": ["image"], "data": [[encoded]]}})
        assert status == 200, answer
        np.testing.assert_allclose(np.array(answer["predictions"], dtype=np.float32), expected[:1], rtol=0, atol=1e-6)
        status, answer = _post(port, {"dataframe_records": [{"path": str(path)} for path in images]})
        assert status == 200, answer
        np.testing.assert_allclose(np.array(answer["predictions"], dtype=np.float32), expected, rtol=0, atol=1e-6)
        status, answer = _post(port, {"dataframe_records": [{"path": str(tmp_path / "missing.jpg")}]})
        assert status == 400 and "cannot read the image" in answer["message"], answer
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
