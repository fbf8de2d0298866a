"""Train-step time on this machine, with the losses read back every step (the loop before) and only
at the logging cadence (the loop now), and how much of a step the host spends waiting.

    python benchmarks/train_step.py [--families demo deit t2t] [--amp O0 O2] [--kernels on off]
                                    [--steps 40] [--log_every 10]
    python benchmarks/train_step.py --memory      # measured peak memory of a step vs the estimate
    python benchmarks/train_step.py --families dvt_t2t_vit_12 dvt_deit_small --amp O0 \
        --torch_python /path/to/python-with-torch   # full presets, batch 16, against the authors' step

The configs are configs/demo.yaml (demo: 64 px, 1x1/4x4/8x8 tokens, D=64, 3 blocks, batch 32),
configs/tiny_cpu.yaml (deit: 64 px, 4x4/6x6/8x8 tokens, D=64, 2 blocks, batch 32) and the same
with the t2t tokenizers (model=dvt_t2t_vit_12, token_dim=16, grids 2/3/4), on a synthetic demo
dataset written to a temporary folder; ``dvt_t2t_vit_12`` and ``dvt_deit_small`` are the full
presets with their ImageNet configs (mixup, EMA) at batch 16, 224 px. ``--kernels off`` builds the
model without the compiled CPU GELU/LayerNorm kernels (DVT_CPU_KERNELS=0, which the runtime
set-up's ``use_cpu_kernels`` obeys). ``--torch_python`` adds the authors' step
(benchmarks/torch_reference.py --train: forward, summed soft-target cross-entropy, backward, AdamW,
EMA) for the full presets, against our step without the data fetching, in ms per image. Each row times the same compiled step on
the same batches: "every step" reads the exit losses and the applied flag back after every step
(``asnumpy`` twice, as the training loop did), "at log cadence" reads the device-side monitor
every ``--log_every`` steps. Columns: ms per step; the share of the wall time the host spends
blocked in device-to-host reads (waiting for the step to finish), in the step call itself and
in fetching the next batch. A script, not a test: the numbers depend on the machine.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from dvt_ms import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/tiny_cpu.yaml's width and depth as a T2T model (dvt_tiny is a deit preset)
TINY_T2T = {"model": "dvt_t2t_vit_12", "embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0,
            "patch_grids": None, "token_dim": 16}
# family -> (config file, overrides)
# device_target CPU: the ImageNet configs' auto refuses to train on a CPU (a user's run there is a
# mistake); this benchmark measures the CPU on purpose.
FULL_PRESET = {"batch_size": 16, "num_workers": 2, "device_target": "CPU"}
FAMILIES = {"demo": ("demo.yaml", {}), "deit": ("tiny_cpu.yaml", {}), "t2t": ("tiny_cpu.yaml", TINY_T2T),
            "dvt_t2t_vit_12": ("dvt_t2t_vit_12_imagenet.yaml", FULL_PRESET),
            "dvt_deit_small": ("dvt_deit_small_imagenet.yaml", FULL_PRESET)}
# Memory probes: (name, overrides of configs/tiny_cpu.yaml); chosen so activations dominate.
MEMORY_PROBES = [
    ("deit 64px grids 2/4/8 batch 8 (compilation alone)", {"patch_grids": [2, 4, 8], "batch_size": 8}),
    ("deit 64px grids 4/8/16 batch 128", {"patch_grids": [4, 8, 16], "batch_size": 128}),
    ("deit 64px grids 4/8/22 batch 64", {"patch_grids": [4, 8, 22], "batch_size": 64}),
    ("deit 224px D=192 grids 7/10/14 batch 64", {"img_size": 224, "embed_dim": 192, "num_heads": 3,
                                                  "patch_grids": [7, 10, 14], "batch_size": 64}),
    ("t2t 224px D=128 batch 32", {**TINY_T2T, "img_size": 224, "embed_dim": 128, "batch_size": 32}),
]


def _config(data_dir, out_dir, amp_level, extra, config_file="tiny_cpu.yaml"):
    from dvt_ms.config import load_config
    overrides = {"data_dir": data_dir, "output_dir": out_dir, "amp_level": amp_level, "val_every_epochs": 0,
                 "save_every_epochs": 0, "progress_bar": "never", "num_classes": 8, **extra}
    return load_config(os.path.join(REPO, "configs", config_file), overrides)


def _batches(trainer, count):
    """A loader of ``count`` training batches of distinct images."""
    from dvt_ms.data import make_loader
    config, data = trainer.config, trainer.train_data
    needed = count * config.batch_size
    if needed > data.num_samples:
        raise ValueError(f"{count} batches of {config.batch_size} need {needed} images; the data has {data.num_samples}")
    indices = np.random.default_rng(0).permutation(data.num_samples)[:needed]
    return make_loader(data, indices, config, trainer.arch.img_size, trainer.arch.num_classes, is_training=True,
                       num_workers=config.num_workers)


def _run(trainer, steps, log_every, every_step):
    """Seconds in total, in device-to-host reads, in the step call, in fetching batches."""
    step = trainer.train_step
    iterator = _batches(trainer, steps).create_tuple_iterator(num_epochs=1)
    read = call = fetch = 0.0
    begin = time.perf_counter()
    for index in range(steps):
        t0 = time.perf_counter()
        images, labels = next(iterator)[:2]   # (an index column follows in newer loaders)
        t1 = time.perf_counter()
        losses, applied = step(images, labels)
        t2 = time.perf_counter()
        if every_step:
            losses.asnumpy()
            applied.asnumpy()
        elif (index + 1) % log_every == 0 or index + 1 == steps:
            step.read_monitor(reset=True)
        t3 = time.perf_counter()
        fetch, call, read = fetch + t1 - t0, call + t2 - t1, read + t3 - t2
    return time.perf_counter() - begin, read, call, fetch


def time_config(family, amp_level, kernels, steps, log_every, repeats, data_dir, work):
    import mindspore as ms
    from dvt_ms.train.trainer import Trainer
    ms.set_context(mode=ms.GRAPH_MODE)
    os.environ["DVT_CPU_KERNELS"] = "1" if kernels == "on" else "0"   # obeyed by the runtime set-up
    config_file, extra = FAMILIES[family]
    trainer = Trainer(_config(data_dir, os.path.join(work, f"{family}-{amp_level}-{kernels}"), amp_level, extra,
                              config_file))
    trainer.train_step.set_train(True)
    _run(trainer, 3, log_every, every_step=True)   # compile and warm up
    results = {True: [], False: []}
    for _ in range(repeats):
        for every_step in (True, False):   # interleaved: both see the same machine load
            results[every_step].append(_run(trainer, steps, log_every, every_step))
    rows = []
    for every_step, runs in results.items():
        total, read, call, fetch = (statistics.median(values) for values in zip(*runs))
        rows.append({"family": family, "amp": amp_level, "kernels": kernels, "readback": "every step" if every_step else
                     f"every {log_every} steps", "ms_per_step": 1e3 * total / steps, "wait": read / total,
                     "call": call / total, "data": fetch / total,
                     "step_ms_per_image": 1e3 * (total - fetch) / steps / trainer.config.batch_size})
    return rows


def memory_probe(name, extra, data_dir, work):
    """Peak memory the steps add over the built run, against ``estimate_training_memory``."""
    import mindspore as ms
    from dvt_ms.train.memory import estimate_training_memory
    from dvt_ms.train.trainer import Trainer
    ms.set_context(mode=ms.GRAPH_MODE)

    def status(field):
        with open("/proc/self/status", encoding="ascii") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(field))

    config = _config(data_dir, os.path.join(work, "memory"), "O0", extra)
    trainer = Trainer(config)
    trainer.train_step.set_train(True)
    iterator = _batches(trainer, 4).create_tuple_iterator(num_epochs=1)
    before = status("VmRSS:")   # built, not compiled: MindSpore's memory pool for the step comes next
    for images, labels, *_ in iterator:
        trainer.train_step(images, labels)[0].asnumpy()
    peak = status("VmHWM:")
    estimate = estimate_training_memory(config.arch, config.batch_size, "O0")
    return {"name": name, "measured_gb": (peak - before) / 2 ** 30,
            "estimated_activations_gb": config.batch_size * estimate.per_image / 2 ** 30,
            "estimated_total_gb": estimate.total / 2 ** 30}


def _torch_step(python, family, repeats):
    """ms per image of the authors' training step at batch 16 (full presets only), or None."""
    if family not in FULL_PRESET_NAMES:
        return None
    command = [python, os.path.join(REPO, "benchmarks", "torch_reference.py"), "--train", "--model", family,
               "--batch", str(FULL_PRESET["batch_size"]), "--repeats", str(max(repeats, 3))]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        print(f"torch reference failed for {family}: {result.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["ms_per_image"]


FULL_PRESET_NAMES = ("dvt_t2t_vit_12", "dvt_deit_small")


def _write_data(root):
    from dvt_ms.demo.dataset import write_dataset
    write_dataset(root, train_per_class=160, val_per_class=2, image_size=64)


def main(argv=None):
    parser = cli.argument_parser("benchmarks/train_step.py", __doc__)
    parser.add_argument("--families", nargs="+", default=["demo", "deit", "t2t"], choices=sorted(FAMILIES))
    parser.add_argument("--amp", nargs="+", default=["O0", "O2"], choices=["O0", "O1", "O2", "O3"])
    parser.add_argument("--kernels", nargs="+", default=["on"], choices=["on", "off"],
                        help="compiled CPU GELU/LayerNorm kernels (off: DVT_CPU_KERNELS=0)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--log_every", type=int, default=10, help="the logging cadence (tiny_cpu.yaml: 10)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode; the median is reported")
    parser.add_argument("--memory", action="store_true", help="measure peak step memory against the estimate")
    parser.add_argument("--torch_python", help="a Python with torch: the authors' step for the full presets")
    parser.add_argument("--_probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="train-step-bench-") as work:
        data_dir = os.path.join(work, "data")
        if args._probe:
            name, extra, data_dir = json.loads(args._probe)
            print(json.dumps(memory_probe(name, extra, data_dir, work)))
            return 0
        _write_data(data_dir)
        if args.memory:
            print("| config | measured peak of a step (GB) | estimated activations (GB) | estimated total (GB) |")
            print("|---|---|---|---|")
            for name, extra in MEMORY_PROBES:   # one process each: the peak is per process
                result = subprocess.run([sys.executable, __file__, "--_probe", json.dumps([name, extra, data_dir])],
                                        capture_output=True, text=True)
                if result.returncode:
                    print(f"| {name} | failed: {result.stderr.strip().splitlines()[-1]} | | |")
                    continue
                row = json.loads(result.stdout.strip().splitlines()[-1])
                print(f"| {name} | {row['measured_gb']:.2f} | {row['estimated_activations_gb']:.2f} | "
                      f"{row['estimated_total_gb']:.2f} |")
            return 0
        print("| family | amp | kernels | losses read back | ms/step | host waiting on reads | in the step call | "
              "fetching data | step ms/img (no data) | PyTorch ms/img | speedup |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for family in args.families:
            reference = _torch_step(args.torch_python, family, args.repeats) if args.torch_python else None
            for amp_level in args.amp:
                for kernels in args.kernels:
                    try:
                        rows = time_config(family, amp_level, kernels, args.steps, args.log_every, args.repeats,
                                           data_dir, work)
                    except Exception as error:  # e.g. a precision level that does not compile: say so, go on
                        text = str(error).strip()
                        first_line = text.splitlines()[0] if text else type(error).__name__
                        print(f"| {family} | {amp_level} | {kernels} | - | did not run: {first_line[:120]} | | | |")
                        continue
                    for row in rows:
                        print(f"| {row['family']} | {row['amp']} | {row['kernels']} | {row['readback']} | "
                              f"{row['ms_per_step']:.1f} | {100 * row['wait']:.1f}% | {100 * row['call']:.1f}% | "
                              f"{100 * row['data']:.1f}% | {row['step_ms_per_image']:.1f} | "
                              + (f"{reference:.1f} | {reference / row['step_ms_per_image']:.2f}x |" if reference
                                 else "- | - |"))
                    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
