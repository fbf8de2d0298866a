"""The training run: build everything from a ``TrainConfig``, train, validate, checkpoint, resume.

Recipe (docs/training.md): loss = sum of the exits' cross-entropies (mindcv ``create_loss``, label
smoothing / soft mixup targets), mindcv AdamW, warm-up + cosine schedule with cool-down (mindcv
``create_scheduler``), optional EMA and gradient clipping, mixed precision per device. The step is
one compiled graph (``TrainStep``); under msrun every rank trains on its shard and gradients are
averaged across ranks.
"""
import dataclasses
import logging
import os
import random

import mindspore as ms
import numpy as np
import yaml
from mindcv.loss import create_loss
from mindcv.optim import create_optimizer
from mindcv.scheduler import create_scheduler

from ..checkpoint.weights import load_pretrained
from ..config import model_overrides
from ..data import (ImageCheck, SampleTracker, checked_batches, epoch_indices, epoch_loader, make_loader,
                    open_training_data)
from ..errors import CheckpointError, DataError, DVTError
from ..models import build_config, create_model
from .checkpoints import CheckpointManager, TrainingState, load_training_checkpoint
from .progress import Progress
from .runtime import gather_from_ranks, setup_runtime
from .step import ExitLosses, TrainStep
from .validation import ExitHits, evaluate

__all__ = ["NonFiniteLossError", "Trainer", "train"]

_logger = logging.getLogger("dvt_ms.train")


class NonFiniteLossError(DVTError):
    """Training produced a NaN/inf loss; the run stops and keeps its last good checkpoint."""

    exit_code = 1


def _image_check(config, runtime):
    """Rank 0 checks the images (cached in the run folder); the other ranks wait for its result."""
    if not config.verify_images:
        return ImageCheck(check=False)
    token = None
    if runtime.distributed:  # one random number for this start, rank 0's, so no rank reads a stale result
        token = int(gather_from_ranks([random.SystemRandom().randrange(1, 1 << 24)])[0, 0])
    return ImageCheck(os.path.join(config.output_dir, "image_check"), writer=runtime.is_main, token=token)


def _learning_rates(config, steps_per_epoch):
    """Per-step learning rates: linear warm-up from warmup_lr, cosine to min_lr, cool-down at min_lr."""
    return create_scheduler(
        steps_per_epoch, scheduler=config.scheduler, lr=config.lr, min_lr=config.min_lr,
        warmup_epochs=config.warmup_epochs, warmup_factor=config.warmup_lr / config.lr if config.lr else 0.0,
        decay_epochs=config.epochs - config.warmup_epochs, num_epochs=config.epochs + config.cooldown_epochs)


def _save_resolved_config(config, output_dir):
    values = {key: list(value) if isinstance(value, tuple) else value for key, value in config.as_dict().items()}
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(values, f, sort_keys=False)


class Trainer:
    """Everything one run needs, built and checked on construction; ``fit()`` trains.

    Whatever can be wrong with the data (missing folders, empty classes, class-count mismatch,
    too few images) raises ``DataError`` here, before any compilation or training.
    """

    def __init__(self, config):
        self.config = config
        self.runtime = runtime = setup_runtime(config)
        ms.set_seed(config.seed)  # the same on every rank: identical initial weights

        num_classes = build_config(config.model, **model_overrides(config)).num_classes
        self.train_data, self.val_data = open_training_data(config, num_classes, _image_check(config, runtime),
                                                            write_records=runtime.is_main)
        if self.train_data.class_names:  # recorded in the run's config.yaml for calibration and export
            self.config = config = dataclasses.replace(config, class_names=tuple(self.train_data.class_names))
        self.model = create_model(config.model, **model_overrides(config))
        self.arch = self.model.config
        self.steps_per_epoch = self.train_data.num_samples // runtime.world_size // config.batch_size
        if self.steps_per_epoch == 0:
            raise DataError(f"{self.train_data.name} has {self.train_data.num_samples} images: fewer than one "
                            f"batch of {config.batch_size} per device on {runtime.world_size} device(s)")

        if config.pretrained:
            load_pretrained(self.model, config.pretrained)
        # The cell that runs forward: the model, or MindSpore's mixed-precision rewrite of it (same
        # Parameter objects and names, so checkpoints do not depend on the precision).
        self.network = ms.amp.auto_mixed_precision(self.model, runtime.amp_level, runtime.amp_dtype)
        self.num_epochs = config.epochs + config.cooldown_epochs
        self.learning_rates = _learning_rates(config, self.steps_per_epoch)
        exit_losses = ExitLosses(self.network, create_loss("CE", label_smoothing=config.label_smoothing))
        optimizer = create_optimizer(self.model, config.opt, lr=self.learning_rates,
                                     weight_decay=config.weight_decay, weight_decay_filter=config.weight_decay_filter)
        self.train_step = TrainStep(exit_losses, optimizer, runtime.loss_scale_type, config.loss_scale,
                                    config.clip_grad_norm, config.ema_decay if config.ema else None)
        self.exit_hits = ExitHits(self.network, self.arch.num_exits, top_k=min(5, self.arch.num_classes))

        self.checkpoints = CheckpointManager(config.output_dir, config.keep_checkpoints)
        self.state = TrainingState(steps_per_epoch=self.steps_per_epoch)
        self.resumed_from = self._resume() if config.resume else None
        self._saved_step = self.state.global_step if self.resumed_from else None
        self.total_steps = self.num_epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)

    def _resume(self):
        path = self.config.resume
        if path == "auto":
            path = self.checkpoints.latest()
            if path is None:
                _logger.info("resume: auto found no checkpoint in %s; starting fresh", self.checkpoints.directory)
                return None
        state = load_training_checkpoint(self.train_step, path)
        if state.steps_per_epoch != self.steps_per_epoch:
            raise CheckpointError(
                f"{path} was written with {state.steps_per_epoch} steps per epoch, this run has "
                f"{self.steps_per_epoch}: keep batch_size and the number of devices to resume")
        self.state = state
        _logger.info("resumed from %s: epoch %d, step %d of %d (global step %d)", path, state.epoch + 1,
                     state.step_in_epoch, self.steps_per_epoch, state.global_step)
        return path

    def fit(self):
        """Train to the end (or ``max_steps``); returns a summary dict."""
        config, runtime, state = self.config, self.runtime, self.state
        if runtime.is_main:
            _save_resolved_config(config, config.output_dir)
        self.progress = Progress(config.output_dir, self.total_steps, config.batch_size * runtime.world_size,
                                 config.log_every_steps, config.progress_bar, enabled=runtime.is_main)
        self.progress.record("start", resumed_from=self.resumed_from, global_step=state.global_step,
                             steps_per_epoch=self.steps_per_epoch, world_size=runtime.world_size,
                             device=runtime.device_target, amp_level=runtime.amp_level)
        _logger.info("%s: %d images, %d classes, %d steps per epoch of %d x %d images, %d epochs",
                     self.train_data.name, self.train_data.num_samples, self.arch.num_classes,
                     self.steps_per_epoch, runtime.world_size, config.batch_size, self.num_epochs)
        last_validation = None
        try:
            while state.epoch < self.num_epochs and state.global_step < self.total_steps:
                if state.step_in_epoch < self.steps_per_epoch:  # else resumed from the epoch's last step
                    self._train_epoch()
                if state.step_in_epoch < self.steps_per_epoch:
                    break  # stopped by max_steps mid-epoch
                state.epoch += 1
                state.step_in_epoch = 0
                if self.val_data is not None and (state.epoch % config.val_every_epochs == 0
                                                  or state.epoch == self.num_epochs):
                    last_validation = self._validate()
                    if last_validation["top1"][-1] > state.best_top1:
                        state.best_top1 = last_validation["top1"][-1]
                        self._save(best=True)
                if config.save_every_epochs and state.epoch % config.save_every_epochs == 0:
                    self._save()
            if self._saved_step != state.global_step:
                self._save()  # the final state is always on disk
        finally:
            self.progress.close()
        best = f"best last-exit top-1 {state.best_top1:.2f}%" if state.best_top1 >= 0 else "not validated"
        _logger.info("done: global step %d, %s", state.global_step, best)
        return {"epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "global_step": state.global_step,
                "best_top1": state.best_top1, "validation": last_validation}

    def _train_epoch(self):
        config, runtime, state = self.config, self.runtime, self.state
        batch_size = config.batch_size
        # Same order on every rank (seeded by epoch), each rank its own slice.
        indices = epoch_indices(self.train_data.num_samples, state.epoch, config.seed, runtime.rank,
                                runtime.world_size, shuffle=True)
        # Augmentation seed: reproducible, different per epoch and rank; a resume continues the epoch's pipeline.
        augmentation_seed = int(np.random.SeedSequence([config.seed, state.epoch, runtime.rank]).generate_state(1)[0])
        loader, order, skip = epoch_loader(self.train_data, indices[:self.steps_per_epoch * batch_size],
                                           state.step_in_epoch, config, self.arch.img_size, self.arch.num_classes,
                                           augmentation_seed)
        tracker = SampleTracker(self.train_data, order, f"epoch {state.epoch + 1}")
        self.train_step.set_train(True)
        self.progress.start_epoch(state.epoch, self.num_epochs, state.step_in_epoch, self.steps_per_epoch)
        for images, labels, _ in checked_batches(loader, tracker, skip):
            losses, applied = self.train_step(images, labels)
            losses = losses.asnumpy()
            if not np.isfinite(losses).all():
                last_good = self.checkpoints.latest() or "none (no checkpoint was written yet)"
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {state.epoch + 1}, step {state.step_in_epoch + 1} (global step "
                    f"{state.global_step + 1}): exit losses {losses.tolist()}. Training stopped; this step did "
                    f"not update the weights. Last good checkpoint: {last_good}. Try a lower lr or set "
                    "clip_grad_norm.")
            lr = self.learning_rates[min(state.global_step, len(self.learning_rates) - 1)]
            state.step_in_epoch += 1
            state.global_step += 1
            self.progress.step(state, self.num_epochs, losses.tolist(), lr, bool(applied.asnumpy()))
            if config.save_every_steps and state.global_step % config.save_every_steps == 0:
                self._save()
            if state.global_step >= self.total_steps:
                break
        if tracker.replaced:
            self.progress.record("replaced_images", epoch=state.epoch, rank=runtime.rank,
                                 files=[self.train_data.describe(i) for i in tracker.replaced])
        self.progress.end_epoch()

    def _save(self, best=False):
        """Rank 0 writes; under data parallel every rank first confirms the weights agree."""
        if self.runtime.distributed and not best:
            self._check_ranks_agree()
        if not best:
            self._saved_step = self.state.global_step  # decided alike on every rank (collectives above)
        if not self.runtime.is_main:
            return
        if best:
            self.checkpoints.save_best(self.train_step, self.state)
        else:
            self.checkpoints.save(self.train_step, self.state)

    def _check_ranks_agree(self):
        """Compare per-parameter (sum, sum of squares) across ranks: data parallel keeps them equal,
        so any difference means a rank has silently diverged (recorded, and logged as an error)."""
        fingerprint = np.array([[value.sum(dtype=np.float64), np.square(value, dtype=np.float64).sum()]
                                for value in (param.asnumpy() for param in self.model.trainable_params())])
        per_rank = gather_from_ranks(fingerprint)
        difference = float(np.abs(per_rank - per_rank[0]).max())
        self.progress.record("rank_agreement", global_step=self.state.global_step, max_difference=difference,
                             fingerprints=per_rank.tolist())
        if difference:
            _logger.error("weights differ across ranks at global step %d (largest fingerprint difference %g)",
                          self.state.global_step, difference)

    def _swap_ema(self):
        """Exchange the model's weights with their EMA (calling it twice restores them)."""
        for weight, ema in zip(self.train_step.model_params, self.train_step.ema_params):
            weight_value, ema_value = weight.asnumpy(), ema.asnumpy()
            weight.set_data(ms.Tensor(ema_value))
            ema.set_data(ms.Tensor(weight_value))

    def _validate(self):
        """Per-exit accuracy of the model (and of its EMA), logged and returned."""
        config, runtime, epoch = self.config, self.runtime, self.state.epoch
        indices = epoch_indices(self.val_data.num_samples, 0, config.seed, runtime.rank, runtime.world_size,
                                shuffle=False)

        def run(weights):
            loader = make_loader(self.val_data, indices, config, self.arch.img_size, self.arch.num_classes,
                                 is_training=False, num_workers=config.num_workers)
            self.network.set_train(False)
            batches = checked_batches(loader, SampleTracker(self.val_data, indices, "validation"))
            top1, top5 = evaluate(self.exit_hits, batches, runtime.distributed)
            self.progress.validation(epoch - 1, weights, top1, top5)
            return top1, top5

        top1, top5 = run("")
        result = {"epoch": epoch, "top1": top1, "top5": top5}
        if self.train_step.use_ema:
            self._swap_ema()
            try:
                result["ema_top1"], result["ema_top5"] = run("ema")
            finally:
                self._swap_ema()
        return result


def train(config):
    """Train as ``config`` says; returns the summary of ``Trainer.fit``."""
    return Trainer(config).fit()
