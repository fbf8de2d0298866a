"""A self-check a user runs on their own hardware in a few minutes, and attaches to a report.

``bash scripts/run_device_check.sh [--device_target X] [--quick]`` (``python -m dvt_ms.devicecheck``)
runs, on whatever device MindSpore has, and times:

1. **parity**: each model family at float32 against the authors' outputs in the repository's
   ``tests/golden`` (converted with our converter), max |difference| per exit, 1e-4 to pass;
2. **training**: every preset through the real ``Trainer`` at the device's default precision
   (``amp_level: auto``) on a few synthetic images, first at reduced width with the real token
   grids, then the full preset at a small batch (not with ``--quick``): losses finite;
3. **export + engine**: each family's trained reduced model exported to MindIR, loaded by the
   early-exit engine, its exits equal to the Cell's, every image classified;
4. **kernels**: the 10 most expensive kernels of a profiled training run (``mindspore.profiler``),
   AICPU and host kernels flagged (on Ascend they run beside the AI Cores, not on them).

The rank-agreement check needs several workers: ``run_train.sh --num_devices N`` runs it at every
checkpoint. ``device_check.md`` and ``device_check.json`` are written atomically.

Layering: this is a top-level tool beside the command lines; it imports models, convert, config,
data, checkpoint, train, export and deploy, and nothing imports it (tests/test_architecture.py).
"""
import dataclasses
import json
import logging
import os
import pathlib
import platform
import tempfile
import time

import numpy as np

from ..errors import DVTError
from ..fileio import atomic_write_text
from .kernels import top_kernels

__all__ = ["Part", "run_device_check", "write_report", "GOLDEN_MODELS", "REDUCED_WIDTH"]

_logger = logging.getLogger(__name__)

# The golden files' families and the preset each was made with (tests/golden/README.md).
GOLDEN_MODELS = {"t2t": "dvt_t2t_vit_12", "deit": "dvt_deit_small"}
PARITY_TOLERANCE = 1e-4
# Reduced width: the presets' geometry (image size, token grids, tokenizers), a narrow shallow body.
REDUCED_WIDTH = dict(embed_dim=64, depth=1, num_heads=2, mlp_ratio=2.0)
REDUCED_T2T = dict(token_dim=16)
NUM_CLASSES = 2


@dataclasses.dataclass
class Part:
    """One timed part of the check."""
    name: str
    status: str          # passed | failed | skipped
    seconds: float
    detail: str
    data: dict = dataclasses.field(default_factory=dict)


def repository_golden_dir():
    """``tests/golden`` of the checkout this package runs from, or None (an installed package)."""
    golden = pathlib.Path(__file__).resolve().parents[2] / "tests" / "golden"
    return golden if (golden / "README.md").is_file() else None


def _timed(name, work):
    """Run ``work()`` -> (status, detail, data) as a ``Part``; a user error or a bug is a failed part."""
    _logger.info("device check: %s ...", name)
    started = time.perf_counter()
    try:
        status, detail, data = work()
    except DVTError as error:
        status, detail, data = "failed", f"{type(error).__name__}: {error}", {}
    except Exception as error:  # the check reports every failure rather than stopping at the first
        _logger.exception("device check: %s failed", name)
        status, detail, data = "failed", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}", {}
    part = Part(name, status, time.perf_counter() - started, detail, data)
    _logger.info("device check: %s %s in %.1f s: %s", name, status, part.seconds, detail)
    return part


def _parity(family, golden_dir, work_dir):
    import mindspore as ms

    from ..convert import convert_checkpoint
    from ..models import create_model

    def work():
        overrides = json.loads((golden_dir / f"{family}.json").read_text())
        overrides.pop("family")
        ckpt = work_dir / f"golden_{family}.ckpt"
        convert_checkpoint(golden_dir / f"{family}.pth.tar", ckpt, GOLDEN_MODELS[family], overrides)
        model = create_model(GOLDEN_MODELS[family], **overrides)
        ms.load_param_into_net(model, ms.load_checkpoint(str(ckpt)), strict_load=True)
        model.set_train(False)
        golden = np.load(golden_dir / f"{family}.npz")
        logits = model(ms.Tensor(golden["images"]))
        differences = [float(np.abs(out.asnumpy() - golden[f"logits_exit{k}"]).max()) for k, out in enumerate(logits)]
        worst = max(differences)
        status = "passed" if worst <= PARITY_TOLERANCE else "failed"
        detail = "max |difference| per exit " + ", ".join(f"{d:.1e}" for d in differences) + \
                 f" (tolerance {PARITY_TOLERANCE:g})"
        return status, detail, {"max_abs_difference": differences, "tolerance": PARITY_TOLERANCE}
    return _timed(f"parity {family} (float32, golden {GOLDEN_MODELS[family]})", work)


def _write_images(root, img_size, per_class, seed):
    """Class folders of random PNGs: ``root/c<k>/<i>.png``."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for k in range(NUM_CLASSES):
        folder = root / f"c{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (img_size, img_size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def model_overrides_for(preset, reduced):
    """The config keys of a training check: the preset itself, or its reduced-width version."""
    from ..models import build_config
    if not reduced:
        return {}
    extra = REDUCED_T2T if build_config(preset).family == "t2t" else {}
    return {**REDUCED_WIDTH, **extra}


def _training(preset, reduced, device_target, batch_size, steps, work_dir, profile_dir=None):
    from ..config import load_config
    from ..models import build_config
    from ..train.trainer import Trainer

    label = f"train {preset} ({'reduced width' if reduced else 'full preset'}, batch {batch_size})"

    def work():
        img_size = build_config(preset).img_size
        per_class = batch_size * steps   # two classes: steps_per_epoch = 2 * steps
        data_dir = work_dir / f"images_{img_size}px_{per_class}"
        if not data_dir.exists():
            _write_images(data_dir / "train", img_size, per_class=per_class, seed=0)
            _write_images(data_dir / "val", img_size, per_class=1, seed=1)
        output_dir = work_dir / f"run_{preset}_{'reduced' if reduced else 'full'}"
        config = load_config(overrides={
            "model": preset, **model_overrides_for(preset, reduced), "num_classes": NUM_CLASSES,
            "data_dir": str(data_dir), "output_dir": str(output_dir), "device_target": device_target,
            "batch_size": batch_size, "num_workers": 1, "max_steps": steps, "epochs": 1, "warmup_epochs": 0,
            "cooldown_epochs": 0, "val_every_epochs": 0, "save_every_epochs": 0, "log_every_steps": 1,
            "progress_bar": "never"})
        trainer = Trainer(config)
        if profile_dir is None:
            trainer.fit()
        else:
            with _profiler(trainer.runtime.device_target, profile_dir):
                trainer.fit()
        records = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
        losses = [record["exit_losses"] for record in records if record["event"] == "train"]
        finite = bool(losses) and bool(np.isfinite(np.asarray(losses, np.float64)).all())
        runtime = trainer.runtime
        detail = (f"{len(losses)} steps on {runtime.device_target} at amp {runtime.amp_level}, exit losses "
                  f"{[round(x, 3) for x in losses[-1]] if losses else 'none'}"
                  + ("" if finite else ": NOT FINITE"))
        data = {"device": runtime.device_target, "amp_level": runtime.amp_level, "losses": losses,
                "checkpoint": trainer.checkpoints.latest(),
                "output_dir": str(output_dir), "config": {key: getattr(config, key) for key in (
                    "model", "embed_dim", "depth", "num_heads", "img_size", "batch_size")}}
        return ("passed" if finite else "failed"), detail, data
    return _timed(label, work)


class _profiler:
    """``mindspore.profiler.profile`` around a block, its results parsed into ``profile_dir``."""

    def __init__(self, device, profile_dir):
        self.device, self.profile_dir = device, profile_dir

    def __enter__(self):
        from mindspore.profiler import ProfilerActivity, profile, tensorboard_trace_handler
        activities = [ProfilerActivity.CPU]
        if self.device == "Ascend":
            activities.append(ProfilerActivity.NPU)
        elif self.device == "GPU":
            activities.append(ProfilerActivity.GPU)
        self.profile = profile(activities=activities, on_trace_ready=tensorboard_trace_handler(str(self.profile_dir)))
        self.profile.__enter__()
        return self

    def __exit__(self, *exc):
        self.profile.__exit__(*exc)
        return False


def _kernels(training_part, profile_dir, count=10):
    def work():
        if training_part.status != "passed":
            return "skipped", f"the profiled training run ({training_part.name}) did not pass", {}
        kernels = top_kernels(profile_dir, count, on_host=training_part.data["device"] == "CPU")
        if not kernels:
            return "failed", f"the profiler wrote no kernel records under {profile_dir}", {}
        flagged = [k["type"] for k in kernels if k["flag"]]
        detail = f"top {len(kernels)} kernels of {training_part.name}" + (
            f"; AICPU/host: {', '.join(flagged)}" if flagged else "")
        return "passed", detail, {"kernels": kernels}
    return _timed("kernels", work)


def _export_and_engine(family_part, work_dir):
    import mindspore as ms

    from ..checkpoint import load_model_weights
    from ..deploy.engine import EarlyExitEngine
    from ..contract.preprocessing import preprocess_record, preset_preprocessing
    from ..export.writer import export_model
    from ..models import create_model

    preset = family_part.data.get("config", {}).get("model", "?")

    def work():
        if family_part.status != "passed":
            return "skipped", f"its training check ({family_part.name}) did not pass", {}
        overrides = {**model_overrides_for(preset, reduced=True), "num_classes": NUM_CLASSES}
        model = create_model(preset, **overrides)
        load_model_weights(model, family_part.data["checkpoint"])
        size = model.config.img_size
        out_dir = work_dir / f"export_{preset}"
        started = time.perf_counter()
        defaults = preset_preprocessing(preset)
        preprocess = preprocess_record(size, defaults["crop_pct"], defaults["interpolation"], defaults["mean"],
                                       defaults["std"])
        export_model(model, str(out_dir), preset, preprocess, overwrite=True)
        export_seconds = time.perf_counter() - started
        started = time.perf_counter()
        engine = EarlyExitEngine(str(out_dir), max_batch=4)
        engine.warm_up()
        load_seconds = time.perf_counter() - started
        images = np.random.default_rng(0).standard_normal((4, 3, size, size)).astype(np.float32)
        started = time.perf_counter()
        exported = engine.every_exit(images)
        exit_index, classes, _ = engine.classify(images, [0.5] * engine.num_exits)
        run_seconds = time.perf_counter() - started
        model.set_train(False)
        cells = np.stack([out.asnumpy() for out in model(ms.Tensor(images))])
        difference = float(np.abs(exported - cells).max())
        exits_taken = exit_index.tolist()
        # Each image's class is the Cell's argmax at the exit the engine stopped it at.
        expected = cells[exit_index, np.arange(len(images))].argmax(axis=-1)
        ok = difference <= PARITY_TOLERANCE and len(classes) == len(images) and bool((classes == expected).all())
        detail = (f"{engine.num_exits} exits exported in {export_seconds:.1f} s, loaded and compiled in "
                  f"{load_seconds:.1f} s, run in {run_seconds:.2f} s; exported vs Cell max |difference| "
                  f"{difference:.1e}; exits taken {exits_taken}"
                  + ("" if (classes == expected).all() else "; classes differ from the Cell's"))
        return ("passed" if ok else "failed"), detail, {
            "export_seconds": export_seconds, "load_seconds": load_seconds, "run_seconds": run_seconds,
            "max_abs_difference": difference, "exits_taken": exits_taken}
    return _timed(f"export + engine {preset} (reduced width)", work)


def run_device_check(device_target="auto", quick=False, presets=None, steps=2, full_batch_size=2,
                     golden_dir=None, work_dir=None):
    """Run every part; returns the report (a dict: environment, parts). ``presets``: default all."""
    import mindspore as ms

    from ..device import choose_device, set_float32_precision, use_device
    from ..models import build_config
    from ..models.presets import PRESETS

    presets = list(presets or PRESETS)
    golden_dir = golden_dir if golden_dir is not None else repository_golden_dir()
    choice = choose_device(device_target)
    with tempfile.TemporaryDirectory(prefix="dvt-device-check-") as temporary:
        work_dir = pathlib.Path(work_dir or temporary)
        work_dir.mkdir(parents=True, exist_ok=True)
        use_device(device_target)
        device_target = choice.device   # resolved and logged once; every part runs there
        set_float32_precision(device_target, fast_float32=False)   # parity is float32's (no HF32/TF32)
        parts = []
        for family in GOLDEN_MODELS:
            if golden_dir is None:
                parts.append(Part(f"parity {family}", "skipped", 0.0,
                                  "the golden files live in tests/golden of the repository; this package is "
                                  "installed without them: run the check from a checkout"))
            else:
                parts.append(_parity(family, pathlib.Path(golden_dir), work_dir))
        profile_dir = work_dir / "profile"
        reduced = {}
        for preset in presets:
            # The kernel table comes from the first preset's training run (the real token grids).
            part = _training(preset, True, device_target, 2, steps, work_dir,
                             profile_dir if preset == presets[0] and quick else None)
            parts.append(part)
            reduced[preset] = part
        profiled = reduced[presets[0]]
        if not quick:
            for preset in presets:
                part = _training(preset, False, device_target, full_batch_size, steps, work_dir,
                                 profile_dir if preset == presets[0] else None)
                parts.append(part)
                if preset == presets[0]:
                    profiled = part
        done_families = set()
        for preset in presets:
            family = build_config(preset).family
            if family not in done_families:
                done_families.add(family)
                parts.append(_export_and_engine(reduced[preset], work_dir))
        parts.append(_kernels(profiled, profile_dir))
    return {
        "environment": {
            "mindspore": ms.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "device_target": "auto" if choice.automatic else choice.device, "device": choice.device, "device_reason": choice.reason(),
            "quick": quick, "rank_agreement": "needs several workers: run_train.sh --num_devices N checks it "
                                              "(rank_agreement records in log.jsonl)"},
        "parts": [dataclasses.asdict(part) for part in parts],
        "passed": all(part.status != "failed" for part in parts),
    }


def _markdown(report):
    env = report["environment"]
    lines = ["# DVT device check", "",
             f"- device: **{env['device']}** (device_target {env['device_target']}: {env['device_reason']})",
             f"- MindSpore {env['mindspore']}, Python {env['python']}, {env['platform']}",
             f"- mode: {'quick (reduced width only)' if env['quick'] else 'full'}; "
             f"rank agreement: {env['rank_agreement']}",
             f"- result: **{'passed' if report['passed'] else 'FAILED'}**", "",
             "| part | status | seconds | detail |", "|---|---|---|---|"]
    for part in report["parts"]:
        detail = part["detail"].replace("|", "\\|")
        lines.append(f"| {part['name']} | {part['status']} | {part['seconds']:.1f} | {detail} |")
    kernels = next((p["data"]["kernels"] for p in report["parts"] if p["name"] == "kernels"
                    and p["data"].get("kernels")), None)
    if kernels:
        lines += ["", "## Most expensive kernels", "",
                  "| kernel | where | calls | total ms | share | flag |", "|---|---|---|---|---|---|"]
        for k in kernels:
            lines.append(f"| {k['type']} | {k['core']} | {k['calls']} | {k['total_ms']:.2f} | "
                         f"{100 * k['share']:.1f}% | {k['flag']} |")
    return "\n".join(lines) + "\n"


def write_report(report, out_dir):
    """``device_check.md`` and ``device_check.json`` in ``out_dir`` (each written atomically)."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "device_check.json")
    md_path = os.path.join(out_dir, "device_check.md")
    atomic_write_text(json_path, json.dumps(report, indent=1, default=str) + "\n")
    atomic_write_text(md_path, _markdown(report))
    return md_path, json_path
