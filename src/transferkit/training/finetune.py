"""End-to-end training of a backbone and a new head on Lightning's Trainer.

One LightningModule serves the three strategies; the :class:`Freezer` callback decides what trains
when: ``frozen`` (the head only), ``finetune`` (the head first, then the last layer groups at a
lower learning rate) and ``scratch`` (everything from the first step).  Frozen backbone layers run
in eval mode, so their BatchNorm layers normalise with their stored statistics and never update
them.  Checkpoints carry the history and the RNG state: a resumed run continues the same run.
"""

from __future__ import annotations

import math
import logging
import shutil
import time
import warnings
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import BaseFinetuning, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler
from torchmetrics.classification import MulticlassAccuracy

from transferkit.core.backbones import Backbone
from transferkit.core.errors import TransferkitError
from transferkit.core.heads import head_module
from transferkit.training.options import END_TO_END_STRATEGIES, TrainOptions, check_value
from transferkit.training.options import FIELDS as OPTION_FIELDS
from transferkit.training.options import STRATEGIES as STRATEGY_OPTIONS
from transferkit.training.schedule import FreezeSchedule
from transferkit.core.loader import DecodedImages, ImageSource, share_cores
from transferkit.core.runs import read_csv, write_csv

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")
QUIET = (  # Lightning advice that does not apply here
    ".*does not have many workers.*",  # small data decodes fine in the main process
    ".*module\\(s\\) in eval mode.*",  # frozen layers are in eval mode on purpose
    ".*exists and is not empty.*",  # resuming into our own run dir
    ".*LeafSpec.*deprecated.*",  # Lightning's own use of a torch helper
    ".*returned `None`.*",  # a batch of undecodable images is skipped on purpose
)


@dataclass(frozen=True)
class FitConfig(TrainOptions):
    """The training loop's settings: a run's options (every field of options.TrainOptions, with its
    meaning and default: inherited, not re-declared) and where the inputs come from.  An option
    left at its declared default takes the strategy's own (dropout 0.2 before an end-to-end head)."""

    strategy: str = "finetune"  # "frozen" | "finetune" | "scratch"
    accelerator: str = "auto"
    from_group: int | None = None  # train on cached outputs of this layer group, not on images: see fit
    time_limit_s: float | None = None  # stop training after this long, the learning rate annealed to it: see ImageClassifier

    def __post_init__(self) -> None:
        strategy = STRATEGY_OPTIONS.get(self.strategy)
        for name, value in (strategy.defaults.items() if strategy is not None else ()):
            if getattr(self, name) == OPTION_FIELDS[name].default:
                object.__setattr__(self, name, value)

    @classmethod
    def of(cls, options: TrainOptions, **extra) -> "FitConfig":
        """The loop's settings from a run's options."""
        return cls(**{name: getattr(options, name) for name in OPTION_FIELDS}, **extra)

    def schedule(self, n_groups: int) -> FreezeSchedule:
        return FreezeSchedule.of(self, n_groups)


@dataclass
class FitResult:
    model: Backbone  # the best checkpoint's weights (by val accuracy), in eval mode
    history: list[dict]  # per epoch (numbered from 1): epoch, phase, train/val loss and accuracy, lr
    epochs_completed: int
    best_epoch: int
    best_val_acc: float
    seconds: float
    trainable_params: int  # at the end of training
    total_params: int
    failures: dict[str, list[tuple[int, str]]]  # per split: (position, reason) of images that could not be decoded
    head_layout: dict | None = None  # the new head's, for model.json (heads.head_module builds it)
    global_rank: int = 0  # under DDP every process returns; only rank 0 should write artifacts


def new_head_layout(feature_dim: int, num_classes: int, dropout: float) -> dict:
    """The head an end-to-end run trains: a linear layer, with dropout before it when asked."""
    if dropout > 0:
        return {"type": "dropout-linear", "dims": [feature_dim, num_classes], "dropout": dropout}
    return {"type": "linear", "dims": [feature_dim, num_classes]}


class DecodedLabelledImages(Dataset):
    """Item ``i`` is ``(tensor or None, label, i, error)``; decoding runs in the DataLoader worker."""

    def __init__(self, sources: Sequence[ImageSource], labels: torch.Tensor, transform):
        self.images, self.labels = DecodedImages(sources, transform), labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image, _, error = self.images[index]
        return image, int(self.labels[index]), index, error


class GroupOutputs(Dataset):
    """Item ``i`` is ``(output, label, i, "")``: a frozen layer group's cached output for image ``i``
    (row ``i`` of ``rows``, read when asked for, in the group's ``shape``), mirrored left-right at
    random when ``flip`` (the light augmentation, done on the feature map)."""

    def __init__(self, rows, labels: torch.Tensor, shape: tuple[int, ...], flip: bool, name: str):
        if len(rows.shape) != 2 or rows.shape[1] != math.prod(shape):
            raise TransferkitError(f"{name}: cached outputs of {tuple(rows.shape[1:])} values each; the layer group gives {shape}")
        self.rows, self.labels, self.shape, self.flip = rows, labels, shape, flip

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        output = torch.from_numpy(np.array(self.rows[index], dtype=np.float32)).view(self.shape)
        if self.flip and output.ndim == 3 and torch.rand(()) < 0.5:
            output = output.flip(-1)
        return output, int(self.labels[index]), index, ""


def collate(items):
    """``(images, labels, failures)``: undecodable images leave the batch as (position, reason)."""
    good = [(image, label) for image, label, _, _ in items if image is not None]
    failures = [(index, error) for image, _, index, error in items if image is None]
    if not good:
        return None, None, failures
    return torch.stack([image for image, _ in good]), torch.tensor([label for _, label in good]), failures


class EpochSampler(Sampler[int]):
    """A shuffled (or class-balanced) order drawn from (seed, epoch) alone, so a resumed run sees
    the order an uninterrupted one would; Lightning calls ``set_epoch`` before each epoch."""

    def __init__(self, n: int, seed: int, weights: torch.Tensor | None = None):
        self.n, self.seed, self.weights, self.epoch = n, seed, weights, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is None:
            return iter(torch.randperm(self.n, generator=generator).tolist())
        return iter(WeightedRandomSampler(self.weights, self.n, generator=generator))


class ImageClassifier(L.LightningModule):
    """A Backbone with cross-entropy, accuracy and AdamW on a cosine schedule; :class:`Freezer`
    decides what trains."""

    def __init__(self, backbone: Backbone, config: FitConfig, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.backbone, self.config = backbone, config
        self.schedule = config.schedule(len(backbone.spec.layer_groups))
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.train_acc = MulticlassAccuracy(backbone.num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(backbone.num_classes, average="micro")
        self.history: list[dict] = []
        self.failures: dict[str, dict[int, str]] = {"train": {}, "val": {}}

    def train(self, mode: bool = True):
        """Whoever switches to training mode, frozen layers stay in eval mode (BatchNorm statistics fixed)."""
        super().train(mode)
        for module in self.frozen_modules() if mode else ():
            module.eval()
        return self

    def frozen_modules(self) -> list:
        if not any(p.requires_grad for p in self.backbone.body.parameters()):
            return [self.backbone.body]  # a fixed feature extractor: its dropout is off too
        return [m for group in self.backbone.layer_groups() for m in group if not any(p.requires_grad for p in m.parameters())]

    @property
    def memory_format(self) -> torch.memory_format:
        # Channels-last (NHWC) spares oneDNN's convolutions their layout conversions: a training step
        # at 64 px is 1.18x faster for Lite0, 1.11x for ResNet-50 on a 2-core AVX2 CPU
        # (benchmarks/train_speed.py).  fit() gives the backbone back in the default layout.
        return torch.channels_last if self.backbone.spec.channels_last else torch.contiguous_format

    def on_fit_start(self) -> None:
        self.backbone.to(memory_format=self.memory_format)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Images come as uint8 for a GPU (a quarter of float32's bytes out of the workers) and are normalised
        here, then given the precision's input type, which Lightning sets before the transfer."""
        images, labels, failures = batch
        if images is not None and images.dtype == torch.uint8:
            images = self.trainer.precision_plugin.convert_input(self.backbone.spec.normalize(images))
        return images, labels, failures

    def _step(self, batch, split: str):
        images, labels, failures = batch
        self.failures[split].update(failures)
        if images is None:
            return None  # every image of the batch failed to decode: Lightning skips the step
        images = images.contiguous(memory_format=self.memory_format) if images.ndim == 4 else images
        if self.config.from_group is None:
            logits = self.backbone(images)
        else:
            logits = self.backbone.forward_from(images, self.config.from_group, self.config.image_size)
        if split == "train":
            loss = F.cross_entropy(logits, labels, weight=self.class_weights, label_smoothing=self.config.label_smoothing)
        else:  # the plain loss, comparable whatever the weighting and smoothing
            loss = F.cross_entropy(logits, labels)
        accuracy = self.train_acc if split == "train" else self.val_acc
        accuracy(logits, labels)
        self.log(f"{split}_loss", loss, on_step=False, on_epoch=True, prog_bar=split == "val", batch_size=len(labels), sync_dist=True)
        self.log(f"{split}_acc", accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Every group's learning rate from the schedule at (epoch, batch index) alone: a resumed run and
        # a group unfrozen mid-training (by Freezer, at the epoch's start) follow the schedule of an
        # uninterrupted run.  Each group keeps its peak in "peak_lr".
        factor = self.schedule.lr_factor(self.current_epoch, batch_idx, self.trainer.num_training_batches, self._time_share())
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = group.setdefault("peak_lr", group["lr"]) * factor

    def on_train_start(self) -> None:
        self._started = time.perf_counter()

    def _time_share(self) -> float:
        """The share of ``config.time_limit_s`` spent since training started (0 without a limit)."""
        if not self.config.time_limit_s:
            return 0.0
        return (time.perf_counter() - self._started) / self.config.time_limit_s

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Out of time: Lightning validates, saves the checkpoints and stops after this step.
        if self._time_share() >= 1.0:
            self.trainer.should_stop = True

    def on_train_epoch_end(self) -> None:
        # After validation and before the checkpoints are saved: each checkpoint holds its epoch's row.
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.log("lr", lr)
        metrics = self.trainer.callback_metrics
        row = {k: float(metrics[k]) if k in metrics else None for k in METRICS}
        self.history.append({"epoch": self.current_epoch + 1, "phase": self.schedule.phase(self.current_epoch), **row, "lr": lr})

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        checkpoint["transferkit"] = {"history": self.history, "rng": torch.get_rng_state(), "cuda_rng": cuda}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # The RNG state makes resumed epochs draw the augmentations and dropout masks of an uninterrupted run.
        state = checkpoint.get("transferkit", {})
        self.history = list(state.get("history", []))
        if "rng" in state:
            torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def configure_optimizers(self):
        # The head, and from the first step whatever trains from it (scratch: the whole body); Freezer
        # adds fine-tuned groups as they unfreeze.
        groups = [{"params": list(self.backbone.classifier.parameters()), "lr": self.schedule.lr}]
        if self.schedule.whole_body:
            groups.append({"params": list(self.backbone.body.parameters()), "lr": self.schedule.group_lr})
        return torch.optim.AdamW(groups, weight_decay=self.config.weight_decay)


class Freezer(BaseFinetuning):
    """The frozen / finetune / scratch schedule.

    A group unfrozen mid-training joins the optimizer as a new param group at lr * backbone_lr_mult.
    BaseFinetuning saves the param groups in its state and rebuilds them on resume, before the
    optimizer state is loaded; ``unfrozen`` (saved too) re-opens those groups' gradients.
    """

    def __init__(self, schedule: FreezeSchedule):
        super().__init__()
        self.schedule = schedule
        self.unfrozen = 0  # layer groups training so far, counted from the output end

    def freeze_before_training(self, pl_module: ImageClassifier) -> None:
        # Not BaseFinetuning.freeze: with train_bn=False it sets track_running_stats=False, which in
        # training mode normalises with batch statistics; frozen layers are put in eval mode instead.
        if not self.schedule.whole_body:
            pl_module.backbone.body.requires_grad_(False)

    def finetune_function(self, pl_module: ImageClassifier, epoch: int, optimizer) -> None:
        if self.schedule.whole_body:
            return  # in the optimizer from the start
        groups = pl_module.backbone.layer_groups()
        while self.unfrozen < self.schedule.groups_at(epoch):
            self.unfrozen += 1
            self.add_group(groups[-self.unfrozen], optimizer, self.schedule.group_lr)

    def add_group(self, modules, optimizer, lr: float) -> None:
        # unfreeze_and_add_param_group without its filter_on_optimizer, which matches parameters by value
        # (torch.equal): an untrained BatchNorm weight equal to one already optimised would be left out.
        self.make_trainable(modules)
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [p for p in self.filter_params(modules, train_bn=True) if id(p) not in known]
        if params:
            optimizer.add_param_group({"params": params, "lr": lr})

    def on_fit_start(self, trainer, pl_module: ImageClassifier) -> None:
        groups = pl_module.backbone.layer_groups()
        for group in groups[len(groups) - self.unfrozen :]:  # resumed: the groups that were training
            self.make_trainable(group)
        super().on_fit_start(trainer, pl_module)

    def on_train_start(self, trainer, pl_module: ImageClassifier) -> None:
        pl_module.train()

    def on_train_epoch_start(self, trainer, pl_module: ImageClassifier) -> None:
        super().on_train_epoch_start(trainer, pl_module)  # may unfreeze groups
        pl_module.train()  # and puts what is still frozen back in eval mode

    def state_dict(self) -> dict:
        return {**super().state_dict(), "unfrozen": self.unfrozen}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.unfrozen = state_dict.get("unfrozen", 0)


def _labels(split: tuple[Sequence, Sequence[int]], num_classes: int, name: str) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(split[1], dtype=np.int64))
    if len(split[0]) != len(labels) or not len(labels):
        raise TransferkitError(f"{name}: {len(split[0])} images and {len(labels)} labels; need the same number, at least one")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise TransferkitError(f"{name}: labels must be 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    return labels


def _check(c: FitConfig, schedule: FreezeSchedule, name: str) -> None:
    """The options' own checks (as `transferkit train` makes them), then the ones that need the network."""
    if c.strategy not in END_TO_END_STRATEGIES:
        raise TransferkitError(f"strategy must be one of {', '.join(END_TO_END_STRATEGIES)}, got {c.strategy!r}")
    for f in dataclasses.fields(c):
        if f.name in OPTION_FIELDS and f.name != "unfreeze":
            check_value(f.name, getattr(c, f.name))
    last_frozen, unfreeze_problem = schedule.first_trained_group - 1, schedule.check(name)
    for failed, message in (
        (unfreeze_problem is not None, unfreeze_problem),
        (c.from_group is not None and not 1 <= c.from_group <= last_frozen,
         f"training on cached outputs of layer group {c.from_group} (of 1..{schedule.n_groups}) needs groups 1..{c.from_group} frozen: "
         + ("strategy frozen" if c.from_group == schedule.n_groups else f"strategy frozen, or finetune with unfreeze at most {schedule.n_groups - (c.from_group or 0)}")),
        (c.from_group is not None and c.augment == "strong", "augment strong needs images: cached layer outputs take light (mirroring) or none"),
    ):  # fmt: skip
        if failed:
            raise TransferkitError(message)


def on_gpu(config: FitConfig) -> bool:
    """Whether Lightning's Trainer will run on a GPU."""
    return config.accelerator in ("gpu", "cuda") or (config.accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(config: FitConfig) -> str:
    """``auto``: bf16-mixed on a GPU with native bfloat16 (Ampere and later), else 32-true (on the CPU
    bfloat16 made training slower)."""
    if config.precision != "auto":
        return config.precision
    if not on_gpu(config):
        return "32-true"
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 counts native bfloat16 only
        native = torch.cuda.is_bf16_supported()
    return "bf16-mixed" if native else "32-true"


def _group_output_shape(backbone: Backbone, group: int, image_size: int) -> tuple[int, ...]:
    with torch.inference_mode():
        return tuple(backbone.eval().group_output(torch.zeros(1, 3, image_size, image_size), group).shape[1:])


def _loader(dataset: Dataset, config: FitConfig, sampler: Sampler | None, gpu: bool) -> DataLoader:
    n, size = len(dataset), config.batch_size
    # Rows read from the cache file leave nothing for workers to decode.
    workers = share_cores(n, size, gpu=gpu, workers=0 if isinstance(dataset, GroupOutputs) else config.num_workers)
    # A lone image in the last batch breaks BatchNorm in training mode; shuffled, a different one waits each epoch.
    drop_last = sampler is not None and n > 1 and n % size == 1
    # Workers are not persistent: each epoch's take their seeds from the checkpointed RNG, so a resume replays them.
    return DataLoader(dataset, batch_size=size, sampler=sampler, num_workers=workers, collate_fn=collate, drop_last=drop_last, pin_memory=gpu)


def _resumed_epoch(last: Path) -> int:
    try:
        return int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["epoch"]) + 1
    except Exception as err:  # truncated or foreign file
        raise TransferkitError(f"cannot resume from {last}: not a readable transferkit checkpoint ({err})") from None


def _trainer(config: FitConfig, run_dir: Path, callbacks: list, progress: bool, n_batches: int) -> L.Trainer:
    try:
        return L.Trainer(
            max_epochs=config.epochs, accelerator=config.accelerator, precision=resolve_precision(config),
            devices=1 if config.devices == "auto" else int(config.devices), num_nodes=config.num_nodes,
            strategy=config.distributed, default_root_dir=run_dir,
            logger=CSVLogger(run_dir, name="", version="logs"), callbacks=callbacks,
            enable_progress_bar=progress, enable_model_summary=False, enable_checkpointing=True,
            num_sanity_val_steps=0, log_every_n_steps=max(1, min(50, n_batches)),
        )  # fmt: skip
    except (MisconfigurationException, ValueError, ImportError, RuntimeError) as err:
        raise TransferkitError(
            f"cannot train with accelerator={config.accelerator!r} devices={config.devices!r} num_nodes={config.num_nodes} "
            f"strategy={config.distributed!r} precision={config.precision!r}: {str(err).splitlines()[0]}"
        ) from None


def fit(
    backbone: Backbone, train: tuple[Sequence[ImageSource], Sequence[int]], val: tuple[Sequence[ImageSource], Sequence[int]],
    num_classes: int, config: FitConfig, run_dir: Path, *, resume: bool = False, progress: bool = True,
) -> FitResult:  # fmt: skip
    """Train ``backbone`` in place with a new ``num_classes`` head; artifacts go to ``run_dir``.

    ``train`` and ``val`` are (images, labels); with ``config.from_group`` set, (that layer
    group's flattened outputs as an N x D array, or the rows of a cache entry as
    ``extract_features(layer="groupN").usable_rows()`` gives them, labels): the frozen groups up to
    it then run only on a one-image stand-in per step (see ``Backbone.forward_from``), which is
    what makes a fine-tune of the last groups cheap on a CPU.  ``augment`` "light" mirrors the
    outputs at random; "strong" needs images.

    ``resume=True`` continues from ``run_dir/checkpoints/last.ckpt``: epoch, weights, optimizer,
    freeze phase, history and RNG state.  A fresh run replaces an earlier run's checkpoints and logs.
    """
    started, run_dir = time.perf_counter(), Path(run_dir)
    checkpoints, log_file = run_dir / "checkpoints", run_dir / "logs" / "metrics.csv"
    last = checkpoints / "last.ckpt"
    schedule = config.schedule(len(backbone.layer_groups()))
    _check(config, schedule, backbone.spec.name)
    image_size = backbone.spec.check_image_size(config.image_size)
    train_labels, val_labels = _labels(train, num_classes, "train"), _labels(val, num_classes, "val")
    if resume and not last.is_file():
        raise TransferkitError(f"nothing to resume in {run_dir}: it has no checkpoints/last.ckpt")
    if not resume:
        shutil.rmtree(checkpoints, ignore_errors=True)
        log_file.unlink(missing_ok=True)
    old_log = read_csv(log_file) if log_file.is_file() else []  # CSVLogger empties it on start: merged back below

    L.seed_everything(config.seed, workers=True, verbose=False)
    head_layout = new_head_layout(backbone.feature_dim, num_classes, config.dropout)
    backbone.classifier = head_module(head_layout)  # a resumed run's weights come from its checkpoint
    backbone.requires_grad_(True)  # the Freezer decides from here
    counts = torch.bincount(train_labels, minlength=num_classes).clamp(min=1).float()
    class_weights = len(train_labels) / (num_classes * counts) if config.balance == "weights" else None
    sampler = EpochSampler(len(train_labels), config.seed, (1.0 / counts)[train_labels] if config.balance == "sampler" else None)
    if resume:  # Lightning makes the first epoch's iterator before it calls set_epoch
        sampler.set_epoch(_resumed_epoch(last))
    gpu = on_gpu(config)  # uint8 images, normalised on the device: see ImageClassifier.on_after_batch_transfer
    if config.from_group is None:
        train_set = DecodedLabelledImages(train[0], train_labels, backbone.spec.transform(image_size, gpu, is_training=True, augment=config.augment,
                                                                                                   mirror=config.mirror, crop_scale=config.crop_scale))
        val_set = DecodedLabelledImages(val[0], val_labels, backbone.transform(image_size, gpu))
    else:
        shape = _group_output_shape(backbone, config.from_group, image_size)
        train_set = GroupOutputs(train[0], train_labels, shape, flip=config.augment == "light" and config.mirror, name="train")
        val_set = GroupOutputs(val[0], val_labels, shape, flip=False, name="val")
    train_loader, val_loader = _loader(train_set, config, sampler, gpu), _loader(val_set, config, None, gpu)

    model = ImageClassifier(backbone, config, class_weights)
    # Both saved at the end of each training epoch, after validation, so each holds its epoch's history row;
    # last.ckpt has a callback of its own since Lightning 2.6's save_last refreshes it only when best.ckpt improves.
    best = ModelCheckpoint(checkpoints, "best", monitor="val_acc", mode="max", save_on_train_epoch_end=True, enable_version_counter=False)
    callbacks = [Freezer(schedule), best, ModelCheckpoint(checkpoints, "last", save_on_train_epoch_end=True, enable_version_counter=False)]
    if progress:  # on stderr, so that stdout stays clean for --json
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(console_kwargs={"stderr": True}))
    if config.patience is not None:
        callbacks.append(EarlyStopping("val_acc", mode="max", patience=config.patience))
    banners = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # "GPU available: ...", tips, notes
    level = banners.level
    with warnings.catch_warnings():
        for message in QUIET:
            warnings.filterwarnings("ignore", message=message)
        try:
            banners.setLevel(logging.WARNING)
            trainer = _trainer(config, run_dir, callbacks, progress, len(train_loader))
            banners.setLevel(level if progress else logging.WARNING)  # with the bar come resume and stop notes
            trainer.fit(model, train_loader, val_loader, ckpt_path=last if resume else None, weights_only=True)
        finally:
            banners.setLevel(level)

    if old_log and trainer.is_global_zero:  # the resumed run logged from where last.ckpt left off: the earlier rows go back in front
        new_log = read_csv(log_file) if log_file.is_file() else []
        first = min((int(row["epoch"]) for row in new_log), default=float("inf"))
        write_csv(log_file, [row for row in old_log if int(row["epoch"]) < first] + new_log)
    history = model.history
    if trainer.is_global_zero:
        write_csv(run_dir / "metrics.csv", history)
    best_epoch, best_acc = len(history), float("nan")
    if best.best_model_path:  # none when val accuracy was never a number
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
        backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in state["state_dict"].items() if k.startswith("backbone.")})
        best_epoch, best_acc = int(state["epoch"]) + 1, float(best.best_model_score)
    backbone.cpu().eval().to(memory_format=torch.contiguous_format)
    return FitResult(
        backbone, history, len(history), best_epoch, best_acc, time.perf_counter() - started,
        trainable_params=sum(p.numel() for p in backbone.parameters() if p.requires_grad),
        total_params=sum(p.numel() for p in backbone.parameters()),
        failures={split: sorted(found.items()) for split, found in model.failures.items()},
        head_layout=head_layout, global_rank=trainer.global_rank,
    )  # fmt: skip
