"""transferkit serve: POST /predict against classify --json, every bad upload, micro-batching,
and a real server process that keeps answering."""

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from transferkit.cli import app  # noqa: E402
from transferkit.serve import MicroBatcher, ServeOptions, create_app  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained run: a linear head on the digits' raw pixels (seconds)."""
    from transferkit.api import train

    return train("digits", tmp_path_factory.mktemp("serve") / "run", progress=False, strategy="linear", model="pixels").run_dir


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory):
    """Four of the embedded digits as PNG files (8x8 grey), and their true labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = tmp_path_factory.mktemp("digits")
    paths = []
    for i in range(4):
        paths.append(folder / f"digit-{i}.png")
        Image.fromarray(np.round(digits.images[i] * 255 / 16).astype(np.uint8)).save(paths[-1])
    return paths, digits.target[:4]


@pytest.fixture(scope="module")
def client(run_dir):
    with TestClient(create_app(run_dir, ServeOptions(engine="torch", max_files=4, max_upload_bytes=200_000))) as client:
        yield client


def _png(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def _bomb() -> bytes:
    """A 9,000 x 9,000 px PNG (81 million pixels, over the 64 million limit) of about 10 KB."""
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, "PNG")
    return buffer.getvalue()


def test_predict_agrees_with_classify_json(client, run_dir, digit_files):
    paths, _ = digit_files
    cli = CliRunner().invoke(app, ["classify", str(run_dir), *map(str, paths), "--json", "--top-k", "3", "--engine", "torch"])
    assert cli.exit_code == 0, cli.output
    expected = json.loads(cli.stdout)
    reply = client.post("/predict?top_k=3", files=[("files", (p.name, p.read_bytes(), "image/png")) for p in paths])
    assert reply.status_code == 200, reply.text
    served = reply.json()
    assert [r["image"] for r in served] == [p.name for p in paths]
    assert len(served) == len(expected) == len(paths)
    for got, want in zip(served, expected):
        assert set(got) == set(want) == {"image", "top"}
        assert [(t["class"], t["label"]) for t in got["top"]] == [(t["class"], t["label"]) for t in want["top"]]
        np.testing.assert_allclose([t["probability"] for t in got["top"]], [t["probability"] for t in want["top"]], rtol=1e-4, atol=1e-6)


def test_health_model_and_page(client, run_dir):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["classes"] == 10 and health["engine"] == "torch"
    model = client.get("/model").json()
    assert model["run"] == run_dir.name and model["backbone"] == "pixels" and model["classes"] == [str(d) for d in range(10)]
    assert model["serving"]["max_files"] == 4 and model["summary"]["test_acc"] > 0.9
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "id=files type=file" in page.text and "predict?top_k=" in page.text
    assert "__" not in page.text.split("<script>")[0]  # every placeholder filled


def test_the_page_is_one_file_under_the_same_policy_and_escapes_the_run_name(run_dir, tmp_path):
    import re
    import shutil
    from importlib.resources import files

    named = tmp_path / "run<b>&'\""  # a folder name that is markup
    shutil.copytree(run_dir, named)
    with TestClient(create_app(named, ServeOptions(engine="torch", top_k=3))) as client:
        text = client.get("/").text
    csp = "default-src 'none'; img-src blob: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'"
    assert f'<meta http-equiv="Content-Security-Policy" content="{csp}">' in text
    assert "<b>" not in text and "<title>transferkit: run&lt;b&gt;&amp;&#39;&#34;</title>" in text
    assert "run&lt;b&gt;&amp;&#39;&#34;: pixels / linear, 10 classes" in text
    templates = files("transferkit.core") / "templates"
    assert (templates / "serve.css").read_text() in text and (templates / "serve.js").read_text() in text  # inlined, as they are
    assert 'data-top-k="3"' in text and text.count("<script>") == 1
    assert not re.search(r"\s(?:src|href)\s*=\s*(?!['\"]?data:)", text)  # nothing loaded from elsewhere


BAD_UPLOADS = {
    # name: (request keyword arguments, expected status, a phrase the message must hold)
    "not an image": ({"files": [("files", ("notes.png", b"just some text, no pixels", "image/png"))]}, 422, "notes.png: not an image file"),
    "zero bytes": ({"files": [("files", ("empty.jpg", b"", "image/jpeg"))]}, 422, "empty.jpg: empty file (0 bytes)"),
    "truncated": ({"files": [("files", ("cut.png", _png()[:70], "image/png"))]}, 422, "cut.png: corrupt or truncated image"),
    "decompression bomb": ({"files": [("files", ("bomb.png", _bomb(), "image/png"))]}, 422, "decompression-bomb guard"),
    "over the size limit": ({"files": [("files", ("big.png", b"\x89PNG" + b"0" * 300_000, "image/png"))]}, 413, "MB limit a request"),
    "too many files": ({"files": [("files", (f"{i}.png", _png(), "image/png")) for i in range(5)]}, 400, "too many files: at most 4"),
    "a file of the wrong type": ({"files": [("files", ("notes.txt", b"hello", "text/plain"))]}, 415, "notes.txt: content type text/plain is not an image type"),
    "a request of the wrong type": ({"json": {"files": ["x.png"]}}, 415, "send the images as multipart/form-data"),
    "no files field": ({"files": [("image", ("x.png", _png(), "image/png"))]}, 400, "no images: send one or more"),
    "text in the files field": ({"files": [("files", (None, "x.png"))]}, 400, "is text, not a file"),
    "a bad top_k": ({"params": {"top_k": 0}, "files": [("files", ("x.png", _png(), "image/png"))]}, 400, "top_k must be at least 1"),
    "one bad file among good ones": ({"files": [("files", ("ok.png", _png(), "image/png")), ("files", ("bad.png", b"", "image/png"))]}, 422, "bad.png: empty file"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_a_bad_upload_is_one_4xx_json_error_and_the_server_goes_on(client, run_dir, case):
    kwargs, status, phrase = BAD_UPLOADS[case]
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    reply = client.post("/predict", **kwargs)
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert list(body) == ["error"] and phrase in body["error"] and "\n" not in body["error"], body
    good = client.post("/predict", files=[("files", ("red.png", _png(), "image/png"))])
    assert good.status_code == 200 and good.json()[0]["top"][0]["label"] in [str(d) for d in range(10)]
    assert list(client.app.state.upload_dir.iterdir()) == []  # each request's folder removed
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before  # nothing written in the run


def test_unknown_routes_answer_json(client):
    reply = client.get("/nowhere")
    assert reply.status_code == 404 and "the routes are" in reply.json()["error"]
    assert client.get("/predict").status_code == 405


def test_the_upload_folder_is_removed_at_shutdown(run_dir):
    with TestClient(create_app(run_dir, ServeOptions(engine="torch"))) as client:
        folder = client.app.state.upload_dir
        assert folder.is_dir() and client.post("/predict", files=[("files", ("x.png", _png(), "image/png"))]).status_code == 200
    assert not folder.exists()


def test_micro_batching_scores_concurrent_requests_together_and_returns_each_its_rows():
    calls = []

    def score(images: torch.Tensor) -> np.ndarray:
        calls.append(len(images))
        return images.reshape(len(images), -1)[:, :3].numpy()  # each image's own "logits"

    async def main():
        batcher = MicroBatcher(score, max_batch=64, wait_s=0.05)
        await batcher.start()
        try:
            requests = [torch.full((n, 3, 1, 1), float(i)) + torch.arange(3.0).view(1, 3, 1, 1) for i, n in enumerate([1, 2, 1, 3, 1])]
            answers = await asyncio.gather(*(batcher(r) for r in requests))
        finally:
            await batcher.stop()
        return requests, answers

    requests, answers = asyncio.run(main())
    assert calls == [8]  # five requests, eight images, one network call
    for request, answer in zip(requests, answers):
        np.testing.assert_allclose(answer, torch.from_numpy(request.reshape(len(request), 3).numpy()).softmax(1).numpy(), rtol=1e-6)


def test_micro_batching_caps_the_batch():
    calls = []

    async def main():
        batcher = MicroBatcher(lambda x: (calls.append(len(x)), np.zeros((len(x), 2), np.float32))[1], max_batch=4, wait_s=0.05)
        await batcher.start()
        try:
            await asyncio.gather(*(batcher(torch.zeros(1, 3, 1, 1)) for _ in range(10)))
        finally:
            await batcher.stop()

    asyncio.run(main())
    assert sum(calls) == 10 and max(calls) <= 4 and len(calls) <= 4


def test_serve_refuses_a_port_in_use_in_one_line(run_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = CliRunner().invoke(app, ["serve", str(run_dir), "--port", str(taken.getsockname()[1])])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: cannot listen on 127.0.0.1:") and "choose another --port" in result.output
    assert len(result.output.strip().splitlines()) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, *options: str, timeout: float = 90):
    """`transferkit serve` in a subprocess on a free port of 127.0.0.1; returns (process, base URL)
    once /health answers."""
    import httpx

    port = free_port()
    env = {**os.environ, "TRANSFERKIT_ENGINE": "torch"}
    process = subprocess.Popen([sys.executable, "-m", "transferkit", "serve", str(run_dir), "--port", str(port), *options],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"transferkit serve exited {process.returncode}: {process.stdout.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"transferkit serve did not answer in {timeout} s")


def stop_server(process) -> str:
    process.terminate()
    try:
        out, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out


@pytest.mark.slow  # a server process: about 10 s
def test_a_real_server_keeps_answering_bad_requests_and_batches_concurrent_ones(run_dir, digit_files):
    import httpx

    paths, _ = digit_files
    process, url = start_server(run_dir, "--max-upload-mb", "0.2", "--max-files", "4", "--batch-wait-ms", "30")
    try:
        for case, (kwargs, status, phrase) in BAD_UPLOADS.items():
            reply = httpx.post(url + "/predict", timeout=30, **kwargs)
            assert reply.status_code == status and phrase in reply.json()["error"], (case, reply.text)
            assert httpx.get(url + "/health", timeout=5).json()["status"] == "ok", case
        # Too large a body sent without a declared length (chunked) is cut off as it arrives.
        chunks = iter([b"--x\r\nContent-Disposition: form-data; name=files; filename=a.png\r\n\r\n"] + [b"0" * 65536] * 8 + [b"\r\n--x--\r\n"])
        reply = httpx.post(url + "/predict", content=chunks, headers={"content-type": "multipart/form-data; boundary=x"}, timeout=30)
        assert reply.status_code == 413 and "over the 0.2 MB limit" in reply.json()["error"]
        calls_before = httpx.get(url + "/health").json()["network_calls"]

        def post(path: Path) -> dict:
            return httpx.post(url + "/predict?top_k=1", files=[("files", (path.name, path.read_bytes(), "image/png"))], timeout=60).json()[0]

        with ThreadPoolExecutor(len(paths)) as pool:
            answers = list(pool.map(post, paths))
        health = httpx.get(url + "/health").json()
        assert [a["image"] for a in answers] == [p.name for p in paths]
        assert health["images_scored"] >= len(paths) and health["network_calls"] - calls_before < len(paths)  # some were batched
    finally:
        output = stop_server(process)
    assert "Traceback" not in output, output
