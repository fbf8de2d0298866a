"""Per-stage forward latency of each preset on this machine, with and without relation reuse.

    python benchmarks/stage_latency.py [--models NAME ...] [--batches 1 16] [--repeats 5] [--out FILE.md]

Each stage is timed on its own (image + the previous stage's reuse tensors in), after a warm-up
call that compiles the graph; the whole cascade (all exits) is timed the same way. Prints a
Markdown table (and writes it to --out). Random weights: latency does not depend on them.
"""
import logging
import statistics
import time

import numpy as np
import mindspore as ms

from dvt_ms import cli
from dvt_ms.fileio import atomic_write_text
import dvt_ms
from dvt_ms.models.flops import model_flops
from dvt_ms.models.layers import use_device_kernels

LOGGER = logging.getLogger("stage_latency")


def _time(call, repeats):
    call()  # compile + warm up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = call()
        ms.Tensor.asnumpy(outputs[0])   # wait for the result
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def benchmark(name, relation_reuse, batch, repeats):
    model = dvt_ms.create_model(name, relation_reuse=relation_reuse)
    model.set_train(False)
    images = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32))
    flops = model_flops(model.config)
    rows, feature, relations = [], None, None
    for exit_index, stage in enumerate(model.stages):
        inputs = (images, feature, relations)
        seconds = _time(lambda: stage(*inputs), repeats)
        _, feature, relations = stage(*inputs)
        rows.append(dict(model=name, relation_reuse=relation_reuse, batch=batch, part=f"stage {exit_index + 1}",
                         ms=seconds * 1e3, gflops=flops[exit_index]["stage_gflops"] * batch))
        LOGGER.info("%s relation_reuse=%s batch=%d stage %d: %.1f ms", name, relation_reuse, batch, exit_index + 1,
                    seconds * 1e3)
    seconds = _time(lambda: model(images), repeats)
    rows.append(dict(model=name, relation_reuse=relation_reuse, batch=batch, part="cascade", ms=seconds * 1e3,
                     gflops=flops[-1]["cumulative_gflops"] * batch))
    return rows


def to_markdown(rows):
    lines = ["| model | relation reuse | batch | part | latency (ms) | GFLOPs | GFLOP/s |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {'on' if row['relation_reuse'] else 'off'} | {row['batch']} | {row['part']} "
                     f"| {row['ms']:.1f} | {row['gflops']:.2f} | {row['gflops'] / row['ms'] * 1e3:.1f} |")
    return "\n".join(lines)


def main():
    parser = cli.argument_parser("benchmarks/stage_latency.py", __doc__)
    parser.add_argument("--models", nargs="+", default=sorted(dvt_ms.PRESETS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device_target", default="CPU")
    parser.add_argument("--out", help="also write the Markdown table here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(args.device_target)
    use_device_kernels(args.device_target)   # as training and calibration run the model
    rows = []
    for name in args.models:
        for relation_reuse in (True, False):
            for batch in args.batches:
                rows.extend(benchmark(name, relation_reuse, batch, args.repeats))
    table = to_markdown(rows)
    print(table)
    if args.out:
        atomic_write_text(args.out, table + "\n")


if __name__ == "__main__":
    main()
