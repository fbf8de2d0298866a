"""Kernels in the compiled training step, per preset, counted from MindSpore's IR dump.

    python benchmarks/graph_kernels.py [--models NAME ...] [--batch 2] [--jit_levels O0 O1]
                                       [--device_target CPU] [--amp_level O0] [--tiny] [--out FILE.md]

Each (preset, jit_level) compiles the real train step (``TrainStep``: forward, backward, loss
scaling, finite checks, mindcv AdamW, monitor) in a child process with ``MS_DEV_SAVE_GRAPHS=1`` and
counts the kernels of every kernel graph after kernel selection (``hwopt_comm_after_eliminate_nopnode_
kernel_graph*.ir``; bookkeeping nodes -- Load, UpdateState, MakeTuple, TupleGetItem, Depend,
Return -- are not kernels). The step's ``if apply`` splits it into kernel graphs: the largest is
forward + backward, the optimizer/EMA branch is counted apart, so its kernels per parameter tensor
show what a fused AdamW (one kernel per tensor) would save. ``--tiny`` shrinks the presets (depth 1,
width 64) to try the script in seconds; the figures in docs come from the full presets.
"""
import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

BOOKKEEPING = {"Load", "UpdateState", "MakeTuple", "TupleGetItem", "Depend", "Return", "MakeTupleV2",
               "RealMakeTuple", "RealTupleGetItem", "Partial", "Switch", "SwitchLayer", "call"}
_NODE = re.compile(r"^\s+%\d+\([^)]*\) = ([A-Za-z_][\w.]*)")


def count_kernels(dump_dir):
    """{kernel graph file: Counter(op name -> kernels)} of the dump in ``dump_dir``."""
    graphs = {}
    for path in sorted(glob.glob(os.path.join(dump_dir, "**", "hwopt_comm_after_eliminate_nopnode_kernel_graph*.ir"),
                            recursive=True)):
        ops = collections.Counter()
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                match = _NODE.match(line)
                if match:
                    name = match.group(1).removeprefix("PrimFunc_")
                    if name not in BOOKKEEPING and not name.startswith("@"):
                        ops[name] += 1
        graphs[os.path.basename(path)] = ops
    return graphs


def _compile_step(args):
    """Child process: build and run one train step; the IR lands in MS_DEV_SAVE_GRAPHS_PATH."""
    import numpy as np
    import mindspore as ms
    from mindcv.loss import create_loss
    from mindcv.optim import create_optimizer

    import dvt_ms
    from dvt_ms.train.step import ExitLosses, TrainStep

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(args.device_target)
    overrides = dict(embed_dim=64, depth=1, num_heads=2, token_dim=16) if args.tiny else {}
    model = dvt_ms.create_model(args.models[0], num_classes=1000, **overrides)
    network = ms.amp.auto_mixed_precision(model, args.amp_level, ms.float16)
    optimizer = create_optimizer(model, "adamw", lr=[1e-4] * 4, weight_decay=0.05,
                                 weight_decay_filter="norm_and_bias")
    step = TrainStep(ExitLosses(network, create_loss("CE")), optimizer, "dynamic" if args.amp_level != "O0" else "none",
                     65536.0, num_exits=model.config.num_exits)
    step.set_jit_config(ms.JitConfig(jit_level=args.jit_levels[0]))
    size = model.config.img_size
    images = ms.Tensor(np.random.default_rng(0).standard_normal((args.batch, 3, size, size)).astype(np.float32))
    labels = ms.Tensor(np.zeros(args.batch, np.int32))
    step(images, labels)[0].asnumpy()
    print(json.dumps({"parameter_tensors": len(model.trainable_params())}))


def measure(model, jit_level, args):
    with tempfile.TemporaryDirectory(prefix="dvt-ir-") as dump_dir:
        env = {**os.environ, "MS_DEV_SAVE_GRAPHS": "1", "MS_DEV_SAVE_GRAPHS_PATH": dump_dir}
        command = [sys.executable, __file__, "--child", "--models", model, "--jit_levels", jit_level,
                   "--batch", str(args.batch), "--device_target", args.device_target, "--amp_level", args.amp_level]
        if args.tiny:
            command.append("--tiny")
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{model} {jit_level}: the step did not compile:\n{result.stderr[-2000:]}")
        info = json.loads(result.stdout.strip().splitlines()[-1])
        graphs = count_kernels(dump_dir)
    # the update branch writes every parameter and both AdamW moments: the most Assign kernels
    update_name = max(graphs, key=lambda name: graphs[name].get("Assign", 0))
    update_kernels = sum(graphs[update_name].values())
    others = [sum(ops.values()) for name, ops in graphs.items() if name != update_name]
    return dict(model=model, jit_level=jit_level, kernel_graphs=len(graphs),
                kernels=sum(sum(ops.values()) for ops in graphs.values()), largest=max(others, default=0),
                update_kernels=update_kernels, parameter_tensors=info["parameter_tensors"],
                per_tensor=update_kernels / info["parameter_tensors"],
                top=", ".join(f"{name} {count}" for name, count in
                              sum(graphs.values(), collections.Counter()).most_common(6)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["dvt_t2t_vit_12", "dvt_t2t_vit_14", "dvt_deit_small"])
    parser.add_argument("--jit_levels", nargs="+", default=["O0", "O1"], choices=["O0", "O1"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    parser.add_argument("--amp_level", default="O0", choices=["O0", "O1", "O2", "O3"])
    parser.add_argument("--tiny", action="store_true", help="depth 1, width 64: try the script in seconds")
    parser.add_argument("--out", help="also write the table here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _compile_step(args)
    rows = [measure(model, level, args) for model in args.models for level in args.jit_levels]
    lines = [f"Kernels in the compiled train step ({args.device_target}, amp {args.amp_level}, batch {args.batch}"
             f"{', tiny' if args.tiny else ''})", "",
             "| model | jit_level | kernel graphs | kernels | fwd+bwd graph | update branch | parameter tensors "
             "| update kernels per tensor | most frequent |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['jit_level']} | {row['kernel_graphs']} | {row['kernels']} | "
                     f"{row['largest']} | {row['update_kernels']} | {row['parameter_tensors']} | "
                     f"{row['per_tensor']:.1f} | {row['top']} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        from dvt_ms.fileio import atomic_write_text
        atomic_write_text(args.out, table)


if __name__ == "__main__":
    main()
