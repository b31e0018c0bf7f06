"""`transferkit serve`: a trained run as a local web page and JSON API."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli._app import ENGINE, command


@command("serve")
def serve(
    run: Path = typer.Argument(..., help="A run folder written by `transferkit train`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (127.0.0.1: this machine only)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Classes shown per image (a request may ask ?top_k=)."),
    engine: str = ENGINE,
    max_files: int = typer.Option(16, "--max-files", min=1, help="Images in one request, at most."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.001, help="Size of one request, all its images, at most."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Images scored together across concurrent requests, at most."),
    batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms", min=0, help="How long an image waits for others to batch with."),
) -> None:
    """Serve a trained run: a page to drop images on (GET /), POST /predict (multipart images in fields named `files`, JSON as `classify --json`), GET /health and GET /model."""
    from transferkit.serve import ServeOptions, serve as run_server

    options = ServeOptions(engine=engine, top_k=top_k, max_files=max_files, max_upload_bytes=int(max_upload_mb * 2**20),
                           max_batch=max_batch, batch_wait_ms=batch_wait_ms)  # fmt: skip
    run_server(run, host=host, port=port, options=options, echo=typer.echo)
