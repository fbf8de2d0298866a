"""Full three-exit cascade speed per preset (graph mode, float32, random weights): ms per image at
each batch size, GFLOP/s, and the fraction of this machine's matrix-product ceiling it reaches.

    python benchmarks/cascade_speed.py [--models NAME ...] [--batches 1 16] [--kernels on off]
                                       [--repeats 3] [--torch_python /path/to/python-with-torch]

``--kernels on`` uses the compiled CPU GELU/LayerNorm kernels (dvt_ms/models/cpu_kernels), ``off``
MindSpore's native ops (``use_cpu_kernels(False)``, what exported graphs run); both include the exact matmul reformulations. For the
code before this work, run the same script with an older dvt_ms first on PYTHONPATH (the
``kernels`` column then reads "n/a": that code has no switch).

The ceiling is a large ``nn.Dense`` (4096 x 1024 x 1024, float32) timed in the same run; "GFLOPs"
are multiply-accumulates as in ``dvt_ms.models.flops`` (and the DVT paper), so GFLOP/s and the
ceiling are both in GMAC/s. ``--torch_python`` adds the PyTorch reference of the authors' code
(benchmarks/torch_reference.py, optional: it needs torch) timed in a subprocess, and the speedup
against it. A script, not a test: the numbers depend on the machine.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from dvt_ms import cli

HERE = os.path.dirname(os.path.abspath(__file__))
PRESET_NAMES = ["dvt_t2t_vit_12", "dvt_t2t_vit_14", "dvt_deit_small"]
CEILING_SHAPE = (4096, 1024, 1024)   # rows, in, out of the reference nn.Dense


def _median_ms(call, repeats, warmup=1):
    for _ in range(warmup):
        call()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        runs.append(time.perf_counter() - start)
    return 1e3 * statistics.median(runs)


def matmul_ceiling_gmacs(repeats):
    """GMAC/s of a large float32 nn.Dense: what this machine's matrix products reach."""
    import mindspore as ms
    from mindspore import nn
    rows, fan_in, fan_out = CEILING_SHAPE
    dense = nn.Dense(fan_in, fan_out)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((rows, fan_in)).astype(np.float32))
    ms_per_call = _median_ms(lambda: dense(x).asnumpy(), max(repeats, 5), warmup=2)
    return rows * fan_in * fan_out / (ms_per_call * 1e6)


def time_cascade(name, batch, repeats):
    """ms per image of the full cascade, and the preset's GMACs per image."""
    import mindspore as ms
    import dvt_ms
    from dvt_ms.models.flops import model_flops
    ms.set_seed(0)
    model = dvt_ms.create_model(name)
    model.set_train(False)
    images = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32))

    def run():
        for logits in model(images):
            logits.asnumpy()

    gmacs = model_flops(model.config)[-1]["cumulative_gflops"]
    return _median_ms(run, repeats) / batch, gmacs


def time_torch(python, name, batch, repeats):
    """ms per image of the PyTorch reference, or None (with the reason on stderr) if it did not run."""
    command = [python, os.path.join(HERE, "torch_reference.py"), "--model", name, "--batch", str(batch),
               "--repeats", str(repeats)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        print(f"torch reference failed for {name} batch {batch}: {result.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["ms_per_image"]


def _kernels_label(setting):
    import importlib.util
    package = os.path.dirname(importlib.util.find_spec("dvt_ms").origin)   # found, not imported
    has_switch = os.path.isdir(os.path.join(package, "models", "cpu_kernels"))
    return setting if has_switch else "n/a"


def main(argv=None):
    parser = cli.argument_parser("benchmarks/cascade_speed.py", __doc__)
    parser.add_argument("--models", nargs="+", default=PRESET_NAMES)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--kernels", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per point; the median is reported")
    parser.add_argument("--torch_python", help="a Python with torch, for the PyTorch reference column")
    parser.add_argument("--_worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--_ceiling", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._worker or args._ceiling:
        # Every measurement in a fresh process: compile caches and memory stay apart, and this
        # parent never starts MindSpore's runtime, whose idle threads would slow the PyTorch reference.
        import mindspore as ms
        ms.set_context(mode=ms.GRAPH_MODE)
        ms.set_device("CPU")
        if args._ceiling:
            print(json.dumps({"gmacs_per_second": matmul_ceiling_gmacs(args.repeats)}))
            return 0
        name, batch, kernels = args._worker
        from dvt_ms.models.layers import use_cpu_kernels
        use_cpu_kernels(kernels == "on")
        ms_per_image, gmacs = time_cascade(name, int(batch), args.repeats)
        print(json.dumps({"ms_per_image": ms_per_image, "gmacs": gmacs}))
        return 0

    ceiling = json.loads(subprocess.run([sys.executable, os.path.abspath(__file__), "--repeats", str(args.repeats),
                                         "--_ceiling"], capture_output=True, text=True, check=True)
                         .stdout.strip().splitlines()[-1])["gmacs_per_second"]
    print(f"matmul ceiling (nn.Dense {'x'.join(map(str, CEILING_SHAPE))}, float32): {ceiling:.0f} GMAC/s")
    header = "| preset | batch | kernels | ms/img | GMACs/img | GMAC/s | of ceiling |"
    rule = "|---|---|---|---|---|---|---|"
    if args.torch_python:
        header += " PyTorch ms/img | speedup vs PyTorch |"
        rule += "---|---|"
    print(header)
    print(rule)
    for name in args.models:
        for batch in args.batches:
            reference = time_torch(args.torch_python, name, batch, args.repeats) if args.torch_python else None
            settings = args.kernels if _kernels_label("on") != "n/a" else args.kernels[:1]
            for kernels in settings:
                command = [sys.executable, os.path.abspath(__file__), "--repeats", str(args.repeats),
                           "--_worker", name, str(batch), kernels]
                result = subprocess.run(command, capture_output=True, text=True)
                if result.returncode:
                    print(f"| {name} | {batch} | {kernels} | failed: {result.stderr.strip()[-200:]} | | | |")
                    continue
                row = json.loads(result.stdout.strip().splitlines()[-1])
                rate = row["gmacs"] / (row["ms_per_image"] / 1e3)
                line = (f"| {name} | {batch} | {_kernels_label(kernels)} | {row['ms_per_image']:.1f} | "
                        f"{row['gmacs']:.2f} | {rate:.0f} | {rate / ceiling:.0%} |")
                if args.torch_python:
                    line += (f" {reference:.1f} | {reference / row['ms_per_image']:.2f}x |" if reference
                             else " - | - |")
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
