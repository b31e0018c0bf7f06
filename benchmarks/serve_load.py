"""`transferkit serve` under load: concurrent clients on 127.0.0.1 against classify in process.

The same images, the same run and engine. In process: ``Run.predict`` (what ``classify`` calls)
on all of them at once and one image a call, which builds its engine each call; then one engine
kept (as the server keeps it) and ``classify_batches`` on all at once (batches of 32: the best
a script can do) and one image a call. Over HTTP: ``--clients`` threads, each with its own keep-alive
connection, send one image per ``POST /predict`` until ``--requests`` have been sent in all
(bounded), with micro-batching (the default 5 ms wait, batches up to 32) and without it
(``--max-batch 1``). Throughput is images per second over the wall time; latency is per
request, as the client sees it.

    python benchmarks/serve_load.py --run runs/cifar-small --images 128 --requests 128 --clients 1,4,16
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import cifar10_folder, command_line, record  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, engine: str, *options: str):
    import httpx

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "transferkit", "serve", str(run), "--port", str(port), "--engine", engine, *options],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"transferkit serve exited: {process.stdout.read()}")
        try:
            httpx.get(url + "/health", timeout=1)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    sys.exit("transferkit serve did not start in 300 s")


def load(url: str, images: list[tuple[str, bytes]], requests: int, clients: int) -> tuple[float, np.ndarray, dict]:
    """``requests`` one-image POSTs from ``clients`` threads; (wall seconds, latencies, /health after)."""
    import httpx

    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                name, data = images[i % len(images)]
                started = time.perf_counter()
                reply = http.post("/predict?top_k=1", files=[("files", (name, data, "image/jpeg"))])
                took = time.perf_counter() - started
                with lock:
                    latencies.append(took)
                    if reply.status_code != 200:
                        errors.append(reply.text)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        sys.exit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return wall, np.array(latencies), httpx.get(url + "/health").json()


def timed(call, items) -> np.ndarray:
    """Seconds each call took."""
    took = []
    for item in items:
        started = time.perf_counter()
        call(item)
        took.append(time.perf_counter() - started)
    return np.array(took)


def row(label: str, images: int, wall: float, latencies: np.ndarray | None, calls: str = "") -> str:
    p50, p95 = (f"{1000 * np.percentile(latencies, 50):.0f}", f"{1000 * np.percentile(latencies, 95):.0f}") if latencies is not None else ("", "")
    return f"| {label} | {images} | {images / wall:.1f} | {p50} | {p95} | {calls} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="A run folder (default: a linear head on Lite0 features of 20 digits a class, trained here).")
    parser.add_argument("--images", type=int, default=256, help="CIFAR-10 test JPEGs sent (../shared/datasets).")
    parser.add_argument("--requests", type=int, default=256, help="One-image requests per server configuration, in all.")
    parser.add_argument("--clients", default="1,4,16", help="Concurrent clients, comma-separated.")
    parser.add_argument("--engine", default="onnxruntime", help="torch or onnxruntime, in process and in the server alike.")
    parser.add_argument("--no-record", action="store_true", help="Print the figures without appending them to BENCHMARKS.md.")
    args = parser.parse_args()

    from transferkit.core.asis import classify_batches
    from transferkit.core.runs import load_run

    run_dir = args.run
    if run_dir is None:
        from transferkit.api import train

        run_dir = Path(tempfile.mkdtemp(prefix="serve-load-")) / "run"
        train("digits", run_dir, progress=False, strategy="linear", per_class=20)
    paths = sorted((cifar10_folder() / "test").rglob("*.jpg"))[:: max(1, 10_000 // args.images)][: args.images]
    images = [(p.name, p.read_bytes()) for p in paths]
    run = load_run(run_dir)
    run.predict(paths[:8], engine=args.engine)  # exports and warms the engine, as the server does at start

    lines = [f"{run.meta['backbone']} / {run.meta['strategy']} at {run.image_size} px, engine {args.engine}; {len(paths)} CIFAR-10 test JPEGs "
             f"(32x32); one image a request; {os.cpu_count()} cores shared by the clients and the server; load average at the start "
             f"{os.getloadavg()[0]:.1f}", "",
             "| how | images | images/s | p50 ms | p95 ms | network calls |", "|---|---|---|---|---|---|"]  # fmt: skip
    started = time.perf_counter()
    run.predict(paths, engine=args.engine, batch_size=32)
    lines.append(row("in process, `Run.predict` on all (batches of 32)", len(paths), time.perf_counter() - started, None, f"{-(-len(paths) // 32)}"))
    singles = timed(lambda p: run.predict([p], engine=args.engine), paths[: min(args.requests, 16)])
    lines.append(row("in process, `Run.predict` one image a call", len(singles), singles.sum(), singles, str(len(singles))))
    # Run.predict builds its engine (for ONNX Runtime, a session) each call; a server, or a
    # script that keeps the engine, pays that once:
    engine = run.engine(args.engine, None)
    started = time.perf_counter()
    classify_batches(engine, paths, run.transform, run.classes, top_k=1, batch_size=32)
    lines.append(row("in process, one engine kept, all (batches of 32)", len(paths), time.perf_counter() - started, None, f"{-(-len(paths) // 32)}"))
    singles = timed(lambda p: classify_batches(engine, [p], run.transform, run.classes, top_k=1), paths[: args.requests])
    lines.append(row("in process, one engine kept, one image a call", len(singles), singles.sum(), singles, str(len(singles))))
    print("\n".join(lines), flush=True)

    import httpx

    for label, options in (("serve, micro-batching", ()), ("serve, no batching (--max-batch 1)", ("--max-batch", "1"))):
        process, url = start_server(run_dir, args.engine, *options)
        try:
            load(url, images, min(32, args.requests), 4)  # warm-up
            for clients in [int(c) for c in args.clients.split(",")]:
                before = httpx.get(url + "/health").json()
                wall, latencies, after = load(url, images, args.requests, clients)
                calls = after["network_calls"] - before["network_calls"]
                lines.append(row(f"{label}, {clients} client{'s' if clients > 1 else ''}", args.requests, wall, latencies,
                                 f"{calls} ({args.requests / max(calls, 1):.1f} images each)"))  # fmt: skip
                print(lines[-1], flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    lines += ["", f"Load average at the end: {os.getloadavg()[0]:.1f} (other work on the machine slows every row alike only if it stays level)."]
    if not args.no_record:
        record("transferkit serve under load against classify in process", command_line(), lines)


if __name__ == "__main__":
    main()
