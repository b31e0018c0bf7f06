"""``--strategy finetune``: the head first, then the last layer groups (or all) at a lower learning
rate; with ``--cache-frozen`` the groups that never train run once and their output is cached."""

from transferkit.core.errors import TransferkitError
from transferkit.core.registry import get_spec
from transferkit.training.schedule import FreezeSchedule
from transferkit.training.strategies.base import END_TO_END_OPTIONS, Strategy, augment_check


def _check(opts) -> None:
    augment_check(opts)
    if not opts.cache_frozen:
        return
    if opts.unfreeze == "all":
        raise TransferkitError("--cache-frozen needs frozen layers: give --unfreeze N (the layer groups that train, from the output end)")
    schedule = FreezeSchedule.of(opts, len(get_spec(opts.model).layer_groups))
    if schedule.first_trained_group <= 1:
        raise TransferkitError(f"--cache-frozen needs a frozen layer group: {opts.model} has {schedule.n_groups}, so --unfreeze at most {schedule.n_groups - 1}")
    if opts.augment == "strong":
        raise TransferkitError("--cache-frozen augments the cached feature maps (mirroring, with --augment light): use --augment light or none")
    if opts.crop_scale is not None:
        raise TransferkitError("--cache-frozen trains on cached feature maps, which are not cropped: drop --crop-scale")


STRATEGY = Strategy("finetune", "end-to-end", "the head, then the last layer groups at a lower learning rate",
                    END_TO_END_OPTIONS | {"unfreeze", "backbone_lr_mult", "head_epochs", "gradual", "cache_frozen"}, {"dropout": 0.2}, _check)  # fmt: skip
