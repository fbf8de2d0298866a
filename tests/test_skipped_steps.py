"""A non-finite step is skipped and counted, a dynamic loss scale falls, and only a streak of
``max_skipped_steps`` skips halts the updates (``TrainStep``, one compiled step on CPU)."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import nn

from dvt_ms.config import load_config
from dvt_ms.errors import ConfigError
from dvt_ms.train.step import ExitLosses, TrainStep

FEATURES, CLASSES = 4, 3


class _OneExit(nn.Cell):
    """The smallest "cascade": one exit, one linear layer."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Dense(FEATURES, CLASSES)

    def construct(self, x):
        return (self.dense(x),)


def _train_step(loss_scale_type="none", loss_scale=1.0, max_skipped_steps=3, ema_decay=None):
    ms.set_seed(0)
    model = _OneExit()
    loss = ExitLosses(model, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    return model, TrainStep(loss, nn.SGD(model.trainable_params(), learning_rate=0.1), loss_scale_type,
                            loss_scale, ema_decay=ema_decay, num_exits=1, max_skipped_steps=max_skipped_steps)


def _batch(poisoned=False, scale=1.0):
    images = np.random.default_rng(0).standard_normal((2, FEATURES)).astype(np.float32) * scale
    if poisoned:
        images[0, 0] = np.nan
    return ms.Tensor(images), ms.Tensor(np.array([0, 2], np.int32))


def _weights(model):
    return np.concatenate([param.asnumpy().ravel() for param in model.trainable_params()])


def test_non_finite_loss_is_skipped_counted_and_lowers_the_dynamic_scale():
    model, step = _train_step("dynamic", 1024.0, max_skipped_steps=3, ema_decay=0.5)
    ema = [param.asnumpy().copy() for param in step.ema_params]
    before = _weights(model)
    losses, applied = step(*_batch(poisoned=True))
    assert not applied and not np.isfinite(losses.asnumpy()).all()
    np.testing.assert_array_equal(_weights(model), before)
    for param, value in zip(step.ema_params, ema):
        np.testing.assert_array_equal(param.asnumpy(), value)
    assert step.loss_scale.asnumpy() == 512.0
    _, applied = step(*_batch())
    assert applied and not np.array_equal(_weights(model), before)
    report = step.read_monitor(reset=True)
    assert (report.steps, report.skipped, report.non_finite_steps, report.first_non_finite) == (2, 1, 1, 1)
    assert report.consecutive_skipped == 0 and report.halted_at == 0
    assert np.isfinite(report.mean_losses).all()   # the mean of the finite step alone


def test_only_max_skipped_steps_in_a_row_halt_the_updates():
    model, step = _train_step(max_skipped_steps=3)
    pattern = [True, True, False, True, True, True, False, False]   # poisoned batches
    applied_pattern, weights = [], [_weights(model)]
    for poisoned in pattern:
        _, applied = step(*_batch(poisoned))
        applied_pattern.append(bool(applied))
        weights.append(_weights(model))
    # two skips, then an update resets the streak; three skips halt: the finite steps after stay unapplied
    assert applied_pattern == [False, False, True, False, False, False, False, False]
    for index, applied in enumerate(applied_pattern):
        assert np.array_equal(weights[index + 1], weights[index]) != applied, f"step {index + 1}"
    report = step.read_monitor(reset=True)
    assert (report.skipped, report.non_finite_steps, report.halted_at, report.first_non_finite) == (7, 5, 6, 1)
    assert report.consecutive_skipped == 3
    step(*_batch())
    after_reset = step.read_monitor(reset=False)
    assert after_reset.consecutive_skipped == 3 and after_reset.skipped == 1   # the halt outlives the window


def test_overflowing_gradients_are_skipped_until_the_dynamic_scale_fits():
    """Finite losses, gradients that overflow at the first scales: the float16 story, in float32."""
    model, step = _train_step("dynamic", 2.0 ** 127, max_skipped_steps=40)
    batch = _batch(scale=30.0)
    applied = [bool(step(*batch)[1]) for _ in range(16)]
    first_applied = applied.index(True)
    assert first_applied > 0 and all(applied[first_applied:])
    report = step.read_monitor(reset=True)
    assert report.non_finite_steps == 0 and report.skipped == first_applied
    assert step.loss_scale.asnumpy() == 2.0 ** (127 - first_applied)
    assert np.isfinite(_weights(model)).all()


def test_data_sink_key_is_refused_with_the_reason_and_its_off_value_still_loads(tmp_path):
    base = {"data_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match="data_sink was removed.*delete the key"):
        load_config(overrides={**base, "data_sink": True})
    with pytest.raises(ConfigError, match="dataset_sink_mode was removed"):
        load_config(overrides={**base, "dataset_sink_mode": True})
    # a run folder's config.yaml from before the removal records data_sink: false
    assert not hasattr(load_config(overrides={**base, "data_sink": False}), "data_sink")


def test_max_skipped_steps_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="max_skipped_steps must be >= 1"):
        load_config(overrides={"data_dir": str(tmp_path), "max_skipped_steps": 0})
