"""`mlflow models serve` of the smoke study's registered model answers on 127.0.0.1 with the embeddings that
`antimetric.load` gives, reads files only under the image root it is started with, and answers every bad
request with a 400 of one line, then goes on serving."""
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
from types import SimpleNamespace

import numpy as np
import pytest

import antimetric
from studies.record.registry import model_name
from tests.fixtures.images import bomb_png, fifo

pytestmark = pytest.mark.slow  # the session's smoke study and an `mlflow models serve` subprocess

STARTUP_TIMEOUT_S = 90  # the server imports MLflow, torch and the model; minutes on a loaded 2-core machine
OUTSIDE = "is outside the folder this model reads images from; send the image's bytes in the column `image`"


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
        body = error.read()
        return error.code, json.loads(body) if body.startswith(b"{") else {"body": body.decode()}


def _paths(port: int, *paths: str) -> tuple[int, dict]:
    return _post(port, {"dataframe_records": [{"path": path} for path in paths]})


def _image(port: int, data: bytes) -> tuple[int, dict]:
    return _post(port, {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(data).decode("ascii")]]}})


def _refused(answer: tuple[int, dict]) -> str:
    """The one line of a 400 answer, with no stack trace."""
    status, body = answer
    assert status == 400 and set(body) <= {"error_code", "message", "sqlstate", "error_class"}, answer
    assert "\n" not in body["message"], body["message"]
    return body["message"]


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


@pytest.fixture(scope="module")
def served(smoke_study, demo_data_path, tmp_path_factory):
    """The server (port), its image root (two demo images, a symlink to /etc/passwd, a text file, a bomb),
    and the embeddings antimetric.load gives the two images."""
    folder = tmp_path_factory.mktemp("serve")
    root = folder / "images"
    root.mkdir()
    images = sorted((demo_data_path / "demo").rglob("*.jpg"))[:2]
    for number, image in enumerate(images):
        (root / f"{number}.jpg").write_bytes(image.read_bytes())
    (root / "passwd.jpg").symlink_to("/etc/passwd")
    (root / "notes.jpg").write_text("not an image")
    (root / "bomb.png").write_bytes(bomb_png(14000, 14000))
    uri = smoke_study.dirs["tracking_uri"]
    model_uri = f"models:/{model_name('t')}/1"
    expected = antimetric.load(model_uri, device="cpu", tracking_uri=uri).embed(images).numpy()
    port, log = _free_port(), folder / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "SERVING_MODEL_CONFIG": json.dumps({"image_root": str(root)}),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # its uvicorn
    with log.open("w") as output:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                                   "local", "--host", "127.0.0.1", "--port", str(port)], stdout=output,
                                  stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True)
    try:
        _wait_until_up(server, port, log)
        yield SimpleNamespace(port=port, root=root, expected=expected, images=images, log=log)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_served_model_answers_with_embeddings(served):
    status, answer = _image(served.port, served.images[0].read_bytes())
    assert status == 200, answer
    np.testing.assert_allclose(np.array(answer["predictions"], dtype=np.float32), served.expected[:1], rtol=0, atol=1e-6)
    status, answer = _paths(served.port, str(served.root / "0.jpg"), "1.jpg")  # absolute, and relative to the root
    assert status == 200, answer
    np.testing.assert_allclose(np.array(answer["predictions"], dtype=np.float32), served.expected, rtol=0, atol=1e-6)


def test_served_model_reads_only_what_it_is_sent(served):
    port = served.port
    for path in ("/etc/passwd", "/etc/shadow", "/etc/no-such-file", str(served.images[0]), "../serve.log",
                 "passwd.jpg"):  # the same answer whether the file exists or not: no oracle
        assert _refused(_paths(port, path)) == f"row 0: {path} {OUTSIDE}"
    assert "cannot read the image missing.jpg (No such file or directory)" in _refused(_paths(port, "missing.jpg"))
    assert "cannot read the image notes.jpg (not an image file Pillow can read)" in _refused(_paths(port, "notes.jpg"))
    bomb = "more than the 89,478,485 pixels an image may have"
    assert bomb in _refused(_paths(port, "bomb.png"))
    assert bomb in _refused(_image(port, (served.root / "bomb.png").read_bytes()))
    with fifo(served.root / "pipe.jpg"):
        for _ in range(10):  # more than the server's worker threads: a FIFO once held one each, for ever
            assert "cannot read the image pipe.jpg (not a regular file)" in _refused(_paths(port, "pipe.jpg"))
    status, answer = _paths(port, "0.jpg")  # and it still serves
    assert status == 200, answer
    np.testing.assert_allclose(np.array(answer["predictions"], dtype=np.float32), served.expected[:1], rtol=0, atol=1e-6)
    assert "Traceback" not in served.log.read_text()
