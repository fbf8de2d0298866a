"""The training run: build everything from a ``RunConfig``, train, validate, checkpoint, resume.

Recipe (docs/training.md): loss = sum of the exits' cross-entropies (mindcv ``create_loss``, label
smoothing / soft mixup targets), the authors' AdamW and learning-rate curve (``optim``), optional
EMA and gradient clipping, mixed precision per device. The step is one compiled graph
(``TrainStep``); under msrun every rank trains on its shard and gradients are averaged across ranks.

The loop reads nothing back after a step: losses, skipped updates and non-finite losses
accumulate on the device and are read at the logging cadence and before every save. A step with a
non-finite loss or gradients is skipped on the device (``TrainStep``); ``max_skipped_steps`` in a
row freeze the weights there, so the run stops no later than the next log line or save, and no
checkpoint is written after the streak began. Before anything is built, the run folder (``run_folder``), the step's
memory (``memory``) and the output path are checked; SIGINT/SIGTERM stop gracefully with a
checkpoint (``interrupts``); a full disk stops with the last checkpoint intact.
"""
import dataclasses
import logging
import os
import random

import mindspore as ms
import numpy as np
from mindcv.loss import create_loss

from ..checkpoint.weights import load_pretrained
from ..data import (ImageCheck, SampleTracker, checked_batches, epoch_indices, epoch_loader, make_loader,
                    open_training_data, read_holdout, write_holdout)
from ..errors import CheckpointError, DataError, DiskFullError, DVTError, OutputPathError
from ..models import DVT
from .checkpoints import CheckpointManager, TrainingState, load_training_checkpoint
from .interrupts import StopSignals, TrainingInterrupted
from .memory import check_training_memory
from .optim import create_optimizer, learning_rates
from .progress import Progress
from .run_folder import inspect_run_folder
from .runtime import gather_from_ranks, setup_runtime, sum_over_ranks
from .step import ExitLosses, TrainStep
from .validation import ExitHits, evaluate

__all__ = ["NonFiniteLossError", "TrainingInterrupted", "Trainer", "train"]

_logger = logging.getLogger("dvt_ms.train")


class NonFiniteLossError(DVTError):
    """``max_skipped_steps`` steps in a row had a NaN/inf loss or gradients; the run stops and keeps
    its last good checkpoint."""

    exit_code = 1


def _image_check(config, runtime):
    """Rank 0 checks the images (cached in the run folder); the other ranks wait for its result."""
    if not config.verify_images:
        return ImageCheck(check=False)
    token = None
    if runtime.distributed:  # one random number for this start, rank 0's, so no rank reads a stale result
        token = int(gather_from_ranks([random.SystemRandom().randrange(1, 1 << 24)])[0, 0])
    return ImageCheck(os.path.join(config.output_dir, "image_check"), writer=runtime.is_main, token=token,
                      wait_seconds=60 * config.image_check_wait_minutes)


class Trainer:
    """Everything one run needs, built and checked on construction; ``fit()`` trains.

    What can be known wrong raises a ``DVTError`` here, before any compilation or training and
    without writing anything but the image-check cache (``output_dir/image_check``): a step that
    cannot fit in memory, an output_dir that cannot be written or holds another run
    (``OutputPathError``), data problems (missing folders, empty classes, class-count mismatch,
    too few images: ``DataError``).
    """

    def __init__(self, config):
        self.config = config
        self.runtime = runtime = setup_runtime(config)
        check_training_memory(config.arch, config.batch_size, runtime)
        self.run_folder = inspect_run_folder(config.output_dir, config.resume, config.overwrite)

        num_classes = config.arch.num_classes
        # The hold-out record is written once the run folder is claimed (``fit``); a run being moved
        # aside (overwrite=true) keeps its records to itself.
        self.train_data, self.val_data = open_training_data(config, num_classes, _image_check(config, runtime),
                                                            write_records=False,
                                                            previous_run=not self.run_folder.move_aside)
        if self.train_data.class_names:  # recorded in the run's config.yaml for calibration and export
            self.config = config = dataclasses.replace(config, class_names=tuple(self.train_data.class_names))
        # Every weight, trained or fixed, is drawn from the seeded stream in construction order:
        # seeding right here gives every rank the same initial weights.
        ms.set_seed(config.seed)
        self.model = DVT(config.arch)
        self.arch = config.arch
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
        self.learning_rates = learning_rates(config, self.steps_per_epoch)
        exit_losses = ExitLosses(self.network, create_loss("CE", label_smoothing=config.label_smoothing))
        optimizer = create_optimizer(self.model, config, self.learning_rates, runtime.device_target)
        self.train_step = TrainStep(exit_losses, optimizer, runtime.loss_scale_type, config.loss_scale,
                                    config.clip_grad_norm, config.ema_decay if config.ema else None,
                                    num_exits=self.arch.num_exits, max_skipped_steps=config.max_skipped_steps)
        self.train_step.set_jit_config(ms.JitConfig(jit_level=runtime.jit_level))
        self.exit_hits = ExitHits(self.network, self.arch.num_exits, top_k=min(5, self.arch.num_classes))

        self.checkpoints = CheckpointManager(config.output_dir, config.keep_checkpoints)
        self.state = TrainingState(steps_per_epoch=self.steps_per_epoch)
        self.resumed_from = self._resume() if config.resume else None
        self._saved_step = self.state.global_step if self.resumed_from else None
        self._window_start = self.state.global_step   # the device monitor counts steps from here
        self.total_steps = self.num_epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.stop = StopSignals()
        self._stop_decided = False

    def _resume(self):
        path = self.run_folder.resume_path
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

    def _agree(self, flag):
        """True on every rank if ``flag`` is true on any (a collective under data parallel)."""
        if not self.runtime.distributed:
            return bool(flag)
        return bool(sum_over_ranks([1.0 if flag else 0.0])[0] > 0)

    def _claim_run_folder(self):
        """Rank 0 takes the run folder once every rank has inspected it; all ranks stop on a refusal."""
        config, state = self.config, self.state
        self._agree(False)   # every rank has inspected the folder before rank 0 changes it
        error = None
        if self.runtime.is_main:
            try:
                self.run_id = self.run_folder.claim(config.as_dict(), {
                    "resumed_from": self.resumed_from, "global_step": state.global_step,
                    "world_size": self.runtime.world_size})
                if self.train_data.held_out and read_holdout(config.output_dir) is None:
                    write_holdout(config, self.train_data, self.train_data.held_out)
            except DVTError as raised:
                error = raised
        if self._agree(error is not None):
            raise error or OutputPathError(f"rank 0 could not start the run in {config.output_dir} (see its log)")

    def fit(self):
        """Train to the end (or ``max_steps``); returns a summary dict.

        Raises ``NonFiniteLossError`` on a non-finite loss, ``TrainingInterrupted`` after a
        graceful stop on SIGINT/SIGTERM, ``DiskFullError`` when a checkpoint does not fit."""
        config, runtime, state = self.config, self.runtime, self.state
        self.run_id = None
        self._claim_run_folder()
        self.progress = Progress(config.output_dir, self.total_steps, config.batch_size * runtime.world_size,
                                 config.log_every_steps, config.progress_bar, enabled=runtime.is_main)
        self.progress.record("start", run_id=self.run_id, resumed_from=self.resumed_from,
                             global_step=state.global_step, steps_per_epoch=self.steps_per_epoch,
                             world_size=runtime.world_size, device=runtime.device_target, amp_level=runtime.amp_level)
        _logger.info("%s: %d images, %d classes, %d steps per epoch of %d x %d images, %d epochs",
                     self.train_data.name, self.train_data.num_samples, self.arch.num_classes,
                     self.steps_per_epoch, runtime.world_size, config.batch_size, self.num_epochs)
        last_validation = None
        try:
            with self.stop:
                while state.epoch < self.num_epochs and state.global_step < self.total_steps:
                    if state.step_in_epoch < self.steps_per_epoch:  # else resumed from the epoch's last step
                        self._train_epoch()
                    self._check_finite()
                    if state.step_in_epoch < self.steps_per_epoch:
                        break  # stopped by max_steps or a signal mid-epoch
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
                    if self._stop_agreed():
                        break
                self._check_finite()
                if self._saved_step != state.global_step:
                    self._save()  # the final state is always on disk
                if state.global_step < self.total_steps and self._stop_agreed():
                    self._stopped()
        finally:
            self.progress.close()
            self.run_folder.release()
        best = f"best last-exit top-1 {state.best_top1:.2f}%" if state.best_top1 >= 0 else "not validated"
        _logger.info("done: global step %d, %s", state.global_step, best)
        return {"epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "global_step": state.global_step,
                "best_top1": state.best_top1, "validation": last_validation}

    def _stop_agreed(self):
        """Whether a SIGINT/SIGTERM asks to stop, decided alike on every rank. Under data parallel
        the ranks agree at the logging cadence and epoch ends (``_train_epoch``); a rank that has the
        signal tells the others there."""
        self._stop_decided = self._stop_decided or self._agree(self.stop.requested)
        return self._stop_decided

    def _stopped(self):
        state, runtime = self.state, self.runtime
        latest = self.checkpoints.latest() if runtime.is_main else "rank 0's checkpoint of this step"
        signum = self.stop.requested or 15
        where = (f"at epoch {state.epoch + 1}, step {state.step_in_epoch} of {self.steps_per_epoch}"
                 if state.step_in_epoch else f"after epoch {state.epoch}")
        raise TrainingInterrupted(
            f"{self.stop.signal_name or 'a stop signal on another rank'} {where} (global step {state.global_step}); "
            f"saved {latest}. "
            f"Continue this run with the same command and resume=auto (output_dir {self.config.output_dir})",
            # msrun ends every worker as soon as one exits with an error: rank 0 may still be saving
            exit_code=0 if runtime.distributed else 128 + signum)

    def _where(self, global_step):
        epoch, step_in_epoch = divmod(global_step - 1, self.steps_per_epoch)
        return f"epoch {epoch + 1}, step {step_in_epoch + 1} (global step {global_step})"

    def _check_finite(self, report=None):
        """Stop with ``NonFiniteLossError`` once ``max_skipped_steps`` steps in a row were skipped."""
        if report is None:
            report = self.train_step.read_monitor(reset=False)
        limit = self.config.max_skipped_steps
        if report.consecutive_skipped < limit:
            return
        # The device halts at the streak's last step; a window read without stopping cannot hide it.
        halted = self._window_start + report.halted_at if report.halted_at else self.state.global_step
        first_skipped = halted - limit + 1
        last_good = self.checkpoints.latest() or "none (no checkpoint was written yet)"
        if report.first_non_finite:
            first_bad = self._window_start + report.first_non_finite
            losses = f"; exit losses {report.non_finite_losses} at {self._where(first_bad)}"
        else:
            losses = "; the losses were finite, the gradients were not"
        raise NonFiniteLossError(
            f"{limit} steps in a row skipped (non-finite loss or gradients), from {self._where(first_skipped)} to "
            f"{self._where(halted)}{losses}. Training stopped; the weights were not updated by these steps or "
            f"after them. Last good checkpoint: {last_good}. Try a lower lr or set clip_grad_norm "
            f"(max_skipped_steps sets how many skips in a row are tolerated).")

    def _log(self):
        report = self.train_step.read_monitor(reset=True)
        self._check_finite(report)
        self._window_start = self.state.global_step
        lr = self.learning_rates[min(self.state.global_step - 1, len(self.learning_rates) - 1)]
        self.progress.log(self.state, self.num_epochs, report.mean_losses, lr, report.skipped, report.steps)

    def _run_steps(self, loader, tracker, skip, num_steps):
        """Run the train step on at most ``num_steps`` batches of ``loader`` after its first ``skip``
        (replayed for an exact resume, see ``data.epoch_loader``); yields after each step is launched."""
        for _, (images, labels, _) in zip(range(num_steps), checked_batches(loader, tracker, skip)):
            self.train_step(images, labels)
            yield

    def _train_epoch(self):
        config, runtime, state = self.config, self.runtime, self.state
        batch_size = config.batch_size
        # Same order on every rank (seeded by epoch), each rank its own slice.
        indices = epoch_indices(self.train_data.num_samples, state.epoch, config.seed, runtime.rank,
                                runtime.world_size, shuffle=True)
        end = min(self.steps_per_epoch, state.step_in_epoch + self.total_steps - state.global_step)
        # Augmentation seed: reproducible, different per epoch and rank; a resume continues the epoch's pipeline.
        augmentation_seed = int(np.random.SeedSequence([config.seed, state.epoch, runtime.rank]).generate_state(1)[0])
        loader, order, skip = epoch_loader(self.train_data, indices[:self.steps_per_epoch * batch_size],
                                           state.step_in_epoch, config, self.arch.img_size, self.arch.num_classes,
                                           augmentation_seed)
        tracker = SampleTracker(self.train_data, order, f"epoch {state.epoch + 1}")
        self.train_step.set_train(True)
        self.progress.start_epoch(state.epoch, self.num_epochs, state.step_in_epoch, self.steps_per_epoch)
        for _ in self._run_steps(loader, tracker, skip, end - state.step_in_epoch):
            state.step_in_epoch += 1
            state.global_step += 1
            self.stop.rearm()
            self.progress.step()
            at_log = state.global_step % config.log_every_steps == 0
            if at_log:
                self._log()
            if config.save_every_steps and state.global_step % config.save_every_steps == 0:
                self._save()
            # One process stops at once; data-parallel ranks agree where they synchronise anyway.
            if (at_log or not runtime.distributed) and self._stop_agreed():
                break
        if tracker.replaced:
            self.progress.record("replaced_images", epoch=state.epoch, rank=runtime.rank,
                                 files=[self.train_data.describe(i) for i in tracker.replaced])
        self.progress.end_epoch()

    def _save(self, best=False):
        """Rank 0 writes; under data parallel every rank first confirms the weights agree. Never
        after a non-finite loss; a full disk stops the run with the previous checkpoint intact."""
        self._check_finite()
        if self.runtime.distributed and not best:
            self._check_ranks_agree()
        if not best:
            self._saved_step = self.state.global_step  # decided alike on every rank (collectives above)
        if not self.runtime.is_main:
            return
        try:
            if best:
                self.checkpoints.save_best(self.train_step, self.state)
            else:
                self.checkpoints.save(self.train_step, self.state)
        except DiskFullError as error:
            last = self.checkpoints.latest() or "none yet"
            raise DiskFullError(f"{error}. Training stopped at global step {self.state.global_step}; the last "
                                f"checkpoint is {last}: continue with resume=auto once there is space") from None

    def _check_ranks_agree(self):
        """Compare per-parameter (sum, sum of squares) of every parameter, trained or fixed (the
        Performers' random features), across ranks: data parallel keeps them equal, so any
        difference means a rank has silently diverged (recorded, and logged as an error)."""
        fingerprint = np.array([[value.sum(dtype=np.float64), np.square(value, dtype=np.float64).sum()]
                                for value in (param.asnumpy() for param in self.model.get_parameters())])
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
