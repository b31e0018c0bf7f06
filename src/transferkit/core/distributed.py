"""The processes of a data-parallel (DDP) extraction, started or joined through Lightning Fabric."""

from __future__ import annotations

import os

from transferkit.core.errors import TransferkitError


def launch(devices: int | str = 1, num_nodes: int = 1, accelerator: str = "auto"):
    """A launched ``lightning.Fabric`` for DDP extraction, or None for one process.

    Fabric re-runs the command for the other local processes, or joins the processes that
    torchrun or SLURM started, as Lightning documents.
    """
    several = str(devices) not in ("1", "auto") or num_nodes > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not several:
        return None
    import lightning as L  # seconds to import: only where there is more than one process

    try:
        fabric = L.Fabric(accelerator=accelerator, devices=int(devices) if str(devices).isdigit() else devices, num_nodes=num_nodes, strategy="ddp")
    except (ValueError, RuntimeError) as err:
        raise TransferkitError(f"cannot start DDP extraction with devices={devices} num_nodes={num_nodes}: {str(err).splitlines()[0]}") from None
    fabric.launch()
    return fabric
