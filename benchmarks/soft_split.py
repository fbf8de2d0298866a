"""The T2T soft split on this machine: Im2Col (``ops.unfold``) against the sliced form that Ascend,
GPU and exported graphs run (``dvt_ms.models.tokenizers.soft_split``).

    python benchmarks/soft_split.py [--batch 16] [--repeats 7] [--tiny] [--out FILE.md]

Times, per split of the T2T presets at 224 px (channels as in the model: 3, then token_dim 64),
the forward and the backward (the input gradient), and each exit's whole tokenizer forward (the exported
graph's share). Median of ``--repeats`` after a compiling call. ``--tiny``: batch 2, 3 repeats.
"""
import argparse
import statistics
import time

import numpy as np
import mindspore as ms
from mindspore import nn, ops

import dvt_ms
from dvt_ms.models.tokenizers import T2TTokenizer, soft_split, use_portable_soft_split
from dvt_ms.fileio import atomic_write_text


class _Split(nn.Cell):
    def __init__(self, split, grid, use_im2col):
        super().__init__()
        self.split, self.grid, self.use_im2col = split, grid, use_im2col

    def construct(self, x):
        return soft_split(x, self.split, self.grid, self.use_im2col)


class _Backward(nn.Cell):
    def __init__(self, network):
        super().__init__()
        self.network = network
        self.grad = ops.GradOperation(sens_param=True)

    def construct(self, x, sens):
        return self.grad(self.network)(x, sens)


def _median_ms(call, repeats):
    call().asnumpy()   # compile
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call().asnumpy()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.tiny:
        args.batch, args.repeats = 2, 3
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    config = dvt_ms.build_config("dvt_t2t_vit_12")
    rng = np.random.default_rng(0)
    lines = [f"T2T soft split on CPU, batch {args.batch}, median of {args.repeats} (ms)", "",
             "| part | Im2Col forward | sliced forward | Im2Col backward | sliced backward |", "|---|---|---|---|---|"]
    seen = set()
    for geometry in config.exits:
        sides = (config.img_size,) + geometry.split_grids[:-1]
        for index, (split, side, grid) in enumerate(zip(geometry.splits, sides, geometry.split_grids)):
            if (split, side) in seen:
                continue
            seen.add((split, side))
            chans = 3 if index == 0 else config.token_dim
            x = ms.Tensor(rng.standard_normal((args.batch, chans, side, side)).astype(np.float32))
            sens = ms.Tensor(rng.standard_normal((args.batch, grid * grid, chans * split[0] ** 2)).astype(np.float32))
            row = []
            for backward in (False, True):
                for use_im2col in (True, False):
                    net = _Split(split, grid, use_im2col)
                    call = (lambda n=_Backward(net): n(x, sens)) if backward else (lambda n=net: n(x))
                    row.append(_median_ms(call, args.repeats))
            lines.append(f"| unfold{split} on {chans}x{side}² | " + " | ".join(f"{t:.1f}" for t in row) + " |")
    images = ms.Tensor(rng.standard_normal((args.batch, 3, config.img_size, config.img_size)).astype(np.float32))
    # two models: a compiled cell keeps its graph, so the split is chosen before the first call
    models = [dvt_ms.create_model("dvt_t2t_vit_12"), use_portable_soft_split(dvt_ms.create_model("dvt_t2t_vit_12"))]
    for exit_index in range(config.num_exits):
        row = []
        for model in models:
            tokenizer = next(cell for _, cell in model.stages[exit_index].cells_and_names()
                             if isinstance(cell, T2TTokenizer))
            tokenizer.set_train(False)
            row.append(_median_ms(lambda t=tokenizer: t(images), args.repeats))
        lines.append(f"| exit {exit_index + 1} tokenizer forward | {row[0]:.1f} | {row[1]:.1f} | | |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        atomic_write_text(args.out, table)


if __name__ == "__main__":
    main()
