"""`transferkit serve`: a trained run behind a local web page and a JSON API.

FastAPI on uvicorn: the API is a few JSON routes and one page, which FastAPI states in a few
lines (with OpenAPI docs at /docs), and uvicorn is the ASGI server it is made for.  The run is
loaded once; its network scores through the engine ``classify`` would choose for many images.
Concurrent requests' images are scored together (micro-batching): the first image waits a few
milliseconds for others, so a burst of single-image requests costs a few batches, not one
network call each.

Every upload is checked before the network sees it: the request's content type and size, the
number of files, each file's declared type, and each image through the same safe decoding as
every other command (empty, truncated, non-image files, decompression bombs).  A bad request
gets one 4xx JSON error, ``{"error": "..."}``, and the server goes on serving.  Uploads are
held in memory (the request size is bounded) and written only to a temporary folder that is
removed once the request is answered.
"""

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from transferkit.core.errors import TransferkitError

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.datastructures import UploadFile
except ImportError as err:  # pragma: no cover - the serve extra not installed
    raise TransferkitError(f"transferkit serve needs FastAPI, uvicorn and python-multipart ({err.name} is missing): pip install 'transferkit[serve]'") from None


@dataclass(frozen=True)
class ServeOptions:
    engine: str = "auto"  # as classify's --engine; auto chooses as for many images
    top_k: int = 5  # classes per image, unless the request asks (?top_k=)
    max_files: int = 16  # images in one request
    max_upload_bytes: int = 20 * 2**20  # one request's body, all its files together
    max_batch: int = 32  # images scored in one network call, at most (one request's own may exceed it)
    batch_wait_ms: float = 5.0  # how long the first image of a batch waits for others


class BadRequest(Exception):
    """A request the server refuses: an HTTP status and one line that says what to send instead."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _InMemoryParts(MultiPartParser):
    """Starlette's multipart parser, keeping each file part in memory (never spooled to the
    system's temporary folder): the request's size is bounded before parsing."""

    spool_max_size = sys.maxsize


class MicroBatcher:
    """Scores images from concurrent requests together, in one thread that owns the network.

    ``await batcher(images)`` returns their probabilities; the first images queued wait at most
    ``wait_s`` for others, up to ``max_batch`` images a call.
    """

    def __init__(self, score: Callable[[torch.Tensor], np.ndarray], max_batch: int, wait_s: float):
        self.score, self.max_batch, self.wait_s = score, max_batch, wait_s
        self.calls = 0  # network calls so far, and the images they scored (for /health)
        self.images = 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="transferkit-network")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def __call__(self, images: torch.Tensor) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((images, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self._queue.get()]
            count = len(waiting[0][0])
            deadline = loop.time() + self.wait_s
            while count < self.max_batch:
                remaining = deadline - loop.time()
                try:
                    item = self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(), remaining)
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                waiting.append(item)
                count += len(item[0])
            waiting = [(images, future) for images, future in waiting if not future.done()]  # clients that went away
            if not waiting:
                continue
            try:
                probs = await loop.run_in_executor(self._executor, self._probabilities, torch.cat([images for images, _ in waiting]))
            except Exception as err:  # the request gets a 500 with the reason; the server goes on
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(err)
                continue
            start = 0
            for images, future in waiting:
                if not future.done():
                    future.set_result(probs[start : start + len(images)])
                start += len(images)

    def _probabilities(self, images: torch.Tensor) -> np.ndarray:
        self.calls += 1
        self.images += len(images)
        return torch.from_numpy(self.score(images)).softmax(1).numpy()


def create_app(run, options: ServeOptions = ServeOptions()) -> FastAPI:
    """The web app for ``run`` (a run folder, or a loaded :class:`~transferkit.core.runs.Run`)."""
    from transferkit.core.runs import Run, load_run

    run = run if isinstance(run, Run) else load_run(run)
    if options.top_k < 1 or options.max_files < 1 or options.max_upload_bytes < 1 or options.max_batch < 1 or options.batch_wait_ms < 0:
        raise TransferkitError("--top-k, --max-files, --max-upload-mb and --max-batch must be positive and --batch-wait-ms not negative")
    engine = run.engine(options.engine, None)  # as classify chooses for many images: the server will see many
    batcher = MicroBatcher(engine, options.max_batch, options.batch_wait_ms / 1000)
    transform = run.transform
    name = run.path.name if run.path else "run"
    description = {"run": name, **{k: v for k, v in run.meta.items()}, "engine": getattr(engine, "name", options.engine), "serving": asdict(options)}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.upload_dir = Path(tempfile.mkdtemp(prefix="transferkit-serve-"))
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            shutil.rmtree(app.state.upload_dir, ignore_errors=True)

    app = FastAPI(title=f"transferkit: {name}", lifespan=lifespan, description="A trained transferkit run: POST images to /predict.")
    app.state.batcher = batcher

    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, err: BadRequest):
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException):
        message = str(err.detail)
        if err.status_code in (404, 405):
            message += f": {request.method} {request.url.path}; the routes are GET /, POST /predict, GET /health, GET /model"
        return JSONResponse({"error": message}, status_code=err.status_code, headers=getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}" for e in err.errors())
        return JSONResponse({"error": problems or "invalid request"}, status_code=422)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page(run, name, options.top_k))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "classes": len(run.classes), "engine": description["engine"],
                "network_calls": batcher.calls, "images_scored": batcher.images}  # fmt: skip

    @app.get("/model")
    async def model() -> dict:
        return description

    @app.post("/predict")
    async def predict(request: Request, top_k: int | None = None) -> list:
        """Top-k classes of each image in the multipart form fields named ``files``: the JSON of
        ``transferkit classify --json``."""
        k = min(options.top_k if top_k is None else top_k, len(run.classes))
        if k < 1:
            raise BadRequest(400, f"top_k must be at least 1, got {top_k}")
        uploads = await _read_uploads(request, options)
        names, images = await run_in_threadpool(_decode, uploads, request.app.state.upload_dir, transform)
        probs = await batcher(images)
        top_p, top_c = torch.from_numpy(probs).topk(k, dim=1)
        return [
            {"image": image, "top": [{"class": int(c), "label": run.classes[int(c)], "probability": float(p)} for p, c in zip(ps, cs)]}
            for image, ps, cs in zip(names, top_p, top_c)
        ]

    return app


def _accepted_type(content_type: str | None) -> bool:
    kind = (content_type or "").split(";")[0].strip().lower()
    return kind in ("", "application/octet-stream") or kind.startswith("image/")


async def _read_uploads(request: Request, options: ServeOptions) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each upload in the fields named ``files``; a BadRequest for a request
    that is not multipart, too large, has too many files or a file of a non-image type."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        raise BadRequest(415, f"send the images as multipart/form-data, in fields named 'files' (got Content-Type {content_type or 'none'})")
    limit = options.max_upload_bytes
    too_large = f"the upload is over the {limit / 2**20:.3g} MB limit a request; send fewer or smaller images (the server's --max-upload-mb sets it)"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, too_large)

    async def body():  # the declared length may be absent (chunked) or false: count what arrives
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise BadRequest(413, too_large)
            yield chunk

    try:
        form = await _InMemoryParts(request.headers, body(), max_files=options.max_files, max_fields=100).parse()
    except MultiPartException as err:
        if str(err).startswith("Too many files"):
            raise BadRequest(400, f"too many files: at most {options.max_files} images a request (the server's --max-files sets it)") from None
        raise BadRequest(400, f"the multipart form cannot be read ({err}); send images in fields named 'files'") from None
    try:
        files = form.getlist("files")
        if not files:
            raise BadRequest(400, "no images: send one or more in multipart form fields named 'files'")
        uploads = []
        for number, upload in enumerate(files, 1):
            if not isinstance(upload, UploadFile):
                raise BadRequest(400, f"form field 'files' number {number} is text, not a file; attach image files")
            filename = os.path.basename(upload.filename or "") or f"file {number}"
            if not _accepted_type(upload.content_type):
                raise BadRequest(415, f"{filename}: content type {upload.content_type} is not an image type; upload image files (image/*)")
            uploads.append((filename, await upload.read()))
        return uploads
    finally:
        await form.close()


def _decode(uploads: list[tuple[str, bytes]], upload_dir: Path, transform) -> tuple[list[str], torch.Tensor]:
    """Each upload decoded as every command decodes a file, from a temporary folder removed
    before returning; a BadRequest (422) naming the first file that is not a usable image."""
    from transferkit.core.loader import DecodedImages

    with tempfile.TemporaryDirectory(dir=upload_dir) as folder:
        paths = []
        for number, (_, data) in enumerate(uploads):
            paths.append(Path(folder) / f"upload-{number}")
            paths[-1].write_bytes(data)
        decoded = DecodedImages(paths, transform)
        images = []
        for number, (filename, _) in enumerate(uploads):
            image, _, error = decoded[number]
            if image is None:
                raise BadRequest(422, error.replace(str(paths[number]), filename))
            images.append(image)
    return [filename for filename, _ in uploads], torch.stack(images)


def check_port(host: str, port: int) -> None:
    """A one-line error now, rather than uvicorn's log line, where the port is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise TransferkitError(f"--host {host}: not an address this machine has ({err.strerror}); use 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as err:
            raise TransferkitError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port") from None


def serve(run_dir, *, host: str = "127.0.0.1", port: int = 8000, options: ServeOptions = ServeOptions(), echo=print) -> None:
    """Serve ``run_dir`` until interrupted."""
    check_port(host, port)
    app = create_app(run_dir, options)
    if host not in ("127.0.0.1", "localhost", "::1"):
        echo(f"warning: listening on {host}: anyone who can reach it can use the model; there is no authentication")
    shown = f"[{host}]" if ":" in host else host
    echo(f"serving {run_dir} at http://{shown}:{port}/  (POST /predict, GET /health, GET /model, docs at /docs; Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _page(run, name: str, top_k: int) -> str:
    """The upload page: templates/serve.html, its style and script inlined (see html_report.render)."""
    from transferkit.core.html_report import render

    title = f"{name}: {run.meta.get('backbone')} / {run.meta.get('strategy')}, {len(run.classes)} classes"
    return render("serve.html", name=name, title=title, top_k=min(top_k, len(run.classes)))
