"""`transferkit extract`: bottleneck features of every split, cached for the heads."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli._app import ALLOW_OUTSIDE_ROOT, ENGINE, JSON, MODEL, NO_PRETRAINED, TRUST_PICKLE, WEIGHTS, command, one_line, print_json
from transferkit.core.errors import TransferkitError

LAYER = typer.Option("penultimate", "--layer", help="penultimate, stageN for pooled features of an earlier stage, or groupN for layer group N's unpooled output, flattened (large).")
FLIP_TTA = typer.Option(
    False, "--flip-tta", help="Average each image's features with its mirror image's (twice the extraction work, often a point more accuracy)."
)
QUANTIZE = typer.Option(
    None, "--quantize", help="int8: extract with ONNX Runtime's static int8 quantisation, calibrated on the training split (faster on a CPU; its accuracy cost is in BENCHMARKS.md)."
)
CACHE_DIR = typer.Option(
    None, "--cache-dir", file_okay=False, help="Feature cache folder (default: $TRANSFERKIT_CACHE or the user cache)."
)


@command("extract")
def extract(
    data: str = typer.Argument(..., help="Image folder, CSV, cifar10[:ROOT], gtsrb[:ROOT], file.p, or digits."),
    model: str = MODEL,
    layer: str = LAYER,
    image_size: int = typer.Option(None, "--image-size", help="Input size (default: the backbone's)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    num_workers: int = typer.Option(None, "--workers", min=0, help="DataLoader workers decoding images."),
    cache_dir: Path = CACHE_DIR,
    weights: Path = WEIGHTS,
    no_pretrained: bool = NO_PRETRAINED,
    trust_pickle: bool = TRUST_PICKLE,
    allow_outside_root: bool = ALLOW_OUTSIDE_ROOT,
    flip_tta: bool = FLIP_TTA,
    quantize: str = QUANTIZE,
    strict: bool = typer.Option(False, "--strict", help="Fail if any image cannot be decoded."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/val split."),
    engine: str = ENGINE,
    devices: str = typer.Option("1", "--devices", help="Processes (Lightning DDP); each extracts a shard of the same cache entry."),
    num_nodes: int = typer.Option(1, "--num-nodes", min=1, help="Machines (launch as docs/scale-out.md says)."),
    chunk_batches: int = typer.Option(16, "--chunk-batches", min=1, hidden=True),
    as_json: bool = JSON,
) -> None:
    """Compute (or reuse) the bottleneck features of DATA, split by split."""
    from transferkit.api import extract as run_extract

    results = run_extract(
        data, model=model, layer=layer, image_size=image_size, batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir,
        weights=weights, pretrained=not no_pretrained, trust_pickle=trust_pickle, allow_outside_root=allow_outside_root, flip_tta=flip_tta,
        quantize=quantize, seed=seed, engine=engine, devices=devices, num_nodes=num_nodes, chunk_batches=chunk_batches, progress=True,
    )  # fmt: skip
    rank = next(iter(results.values())).rank if results else 0
    rows = []
    for split, result in results.items():
        n = len(result.labels)
        rows.append({"split": split, "images": n, "dim": result.dim, "cache": "hit" if result.hit else "computed",
                     "seconds": round(result.seconds, 2), "skipped": result.failures, "key": result.path.name})  # fmt: skip
        if not as_json and rank == 0:
            rate = f", {n / result.seconds:.1f} img/s" if result.seconds else ""
            status = "cache hit" if result.hit else f"computed in {result.seconds:.1f}s{rate}"
            typer.echo(f"{split}: {n} images x {result.dim} features ({status}) [{result.path.name}]")
        for failure in result.failures:
            typer.echo(f"skipped: {one_line(failure['reason'])}", err=True)
    if rank != 0:
        return  # rank 0 reports for every DDP process
    skipped = sum(len(r["skipped"]) for r in rows)
    if as_json:
        print_json({"data": data, "model": model, "layer": layer, "splits": rows})
    if skipped and strict:
        raise TransferkitError(f"{skipped} image{'s' if skipped != 1 else ''} could not be decoded (listed above) and --strict is set; fix or remove them")
    if skipped:
        typer.echo(f"{skipped} images could not be decoded and were skipped (listed above)", err=True)
