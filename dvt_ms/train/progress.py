"""Training progress: log lines, a JSON-lines record beside the checkpoints, a terminal progress bar.

Only rank 0 reports (``enabled=False`` elsewhere). Throughput counts the images of all ranks. The
losses come from the device at the logging cadence: each log line gives their mean over the steps
since the previous one.
"""
import errno
import json
import logging
import os
import sys
import time

from tqdm import tqdm

__all__ = ["Progress", "format_duration"]

_logger = logging.getLogger("dvt_ms.train")


def format_duration(seconds):
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _percentages(values):
    return " ".join(f"{value:.2f}" for value in values)


class Progress:
    """Reports one run: ``step`` after every step, ``validation`` after every evaluation."""

    def __init__(self, output_dir, total_steps, images_per_step, log_every_steps, bar, enabled=True):
        self.enabled = enabled
        self.total_steps = total_steps
        self.images_per_step = images_per_step
        self.log_every_steps = log_every_steps
        self.show_bar = enabled and (bar == "always" or (bar == "auto" and sys.stdout.isatty()))
        self.bar = None
        self.jsonl = None
        if enabled:
            os.makedirs(output_dir, exist_ok=True)
            self.jsonl = open(os.path.join(output_dir, "log.jsonl"), "a", buffering=1)
        self._window_start = time.perf_counter()
        self._window_steps = 0

    def record(self, event, **fields):
        if self.jsonl is None:
            return
        try:
            self.jsonl.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # The log is not worth stopping for; the next checkpoint will stop the run if the disk stays full.
            _logger.warning("cannot write %s (%s); log records are dropped until there is space",
                            self.jsonl.name, error.strerror)

    def start_epoch(self, epoch, num_epochs, start_step, steps_per_epoch):
        if self.show_bar:
            self.bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{num_epochs}",
                            file=sys.stderr, leave=False, dynamic_ncols=True)
        self._window_start = time.perf_counter()
        self._window_steps = 0

    def step(self):
        """After every step: the bar (no device values are read per step)."""
        self._window_steps += 1
        if self.bar is not None:
            self.bar.update(1)

    def log(self, state, num_epochs, losses, lr, skipped, steps):
        """Every ``log_every_steps``: a log line and a JSON record with the exits' mean losses over the
        last ``steps`` steps, of which ``skipped`` did not update the weights."""
        elapsed = time.perf_counter() - self._window_start
        seconds_per_step = elapsed / max(self._window_steps, 1)
        images_per_s = self.images_per_step / seconds_per_step
        eta = format_duration((self.total_steps - state.global_step) * seconds_per_step)
        skipped_text = f" | skipped {skipped} (non-finite loss or gradients)" if skipped else ""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{sum(losses):.4f}", lr=f"{lr:.2e}")
        if self.enabled:
            _logger.info("epoch %d/%d step %d/%d | loss %.4f (exits %s) | lr %.3e | %.1f img/s | ETA %s%s",
                         state.epoch + 1, num_epochs, state.step_in_epoch, state.steps_per_epoch, sum(losses),
                         " ".join(f"{loss:.4f}" for loss in losses), lr, images_per_s, eta, skipped_text)
        self.record("train", epoch=state.epoch, step_in_epoch=state.step_in_epoch,
                    global_step=state.global_step, loss=float(sum(losses)), exit_losses=[float(x) for x in losses],
                    mean_of_steps=steps, lr=lr, images_per_s=round(images_per_s, 2), skipped_steps=skipped)
        self._window_start = time.perf_counter()
        self._window_steps = 0

    def end_epoch(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def validation(self, epoch, name, top1, top5):
        if self.enabled:
            _logger.info("validation after epoch %d%s | top-1 %s | top-5 %s (per exit, %%)", epoch + 1,
                         f" ({name})" if name else "", _percentages(top1), _percentages(top5))
        self.record("val", epoch=epoch, weights=name or "model", top1=list(top1), top5=list(top5))

    def close(self):
        self.end_epoch()
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None
