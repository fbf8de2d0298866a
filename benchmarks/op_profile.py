"""Where a cascade's time goes: MindSpore's profiler on the full three-exit forward (graph mode, float32).

    python benchmarks/op_profile.py [--model dvt_t2t_vit_12] [--batch 1] [--steps 5] [--kernels on|off] [--top 12]

Runs ``--steps`` forwards of a randomly initialised preset under ``mindspore.Profiler`` and prints,
per forward: the wall time, the time inside operators (the profiler's per-kernel times, summed),
the difference (dispatch between kernels, the graph call itself: per-call and per-op overhead),
the number of kernels launched, and the operator types that take the most time. At batch 1 this
is the split between arithmetic and overhead that the batch-1 speed depends on.
"""
import argparse
import csv
import glob
import os
import tempfile
import time

import numpy as np
import mindspore as ms


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dvt_t2t_vit_12")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--kernels", choices=["on", "off"], default="on",
                        help="the compiled CPU GELU/LayerNorm kernels (off: MindSpore's native ops, as exported)")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    import dvt_ms
    from dvt_ms.models.layers import use_cpu_kernels
    use_cpu_kernels(args.kernels == "on")
    model = dvt_ms.create_model(args.model)
    model.set_train(False)
    size = model.config.img_size
    images = ms.Tensor(np.random.default_rng(0).random((args.batch, 3, size, size), np.float32))

    def forward():
        outputs = model(images)
        for output in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
            output.asnumpy()

    for _ in range(3):      # compile and warm up outside the profile
        forward()
    begin = time.perf_counter()
    for _ in range(args.steps):
        forward()
    wall_ms = (time.perf_counter() - begin) / args.steps * 1000

    with tempfile.TemporaryDirectory() as scratch:
        profiler = ms.Profiler(output_path=scratch)
        for _ in range(args.steps):
            forward()
        profiler.analyse()
        table, = glob.glob(os.path.join(scratch, "**", "cpu_op_type_info_0.csv"), recursive=True)
        with open(table, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if row["op_type"] != "op_type"]
    per_type = {}
    for row in rows:        # the file repeats some types: keep one row per type
        per_type[row["op_type"]] = (float(row["total_compute_time"]) / args.steps,
                                    int(row["type_occurrences"]) // args.steps)
    kernel_ms = sum(ms_ for ms_, _ in per_type.values())
    launches = sum(count for _, count in per_type.values())
    print(f"{args.model}, batch {args.batch}, kernels {args.kernels}: per forward {wall_ms:.1f} ms wall (unprofiled), "
          f"{kernel_ms:.1f} ms in {launches} kernels, {wall_ms - kernel_ms:.1f} ms outside them "
          f"({(wall_ms - kernel_ms) / max(launches, 1) * 1000:.0f} us per kernel launched)")
    print("| operator | ms per forward | share of kernel time | launches per forward |")
    print("|---|---|---|---|")
    for name, (ms_, count) in sorted(per_type.items(), key=lambda item: -item[1][0])[:args.top]:
        print(f"| {name} | {ms_:.2f} | {100 * ms_ / kernel_ms:.1f}% | {count} |")


if __name__ == "__main__":
    main()
