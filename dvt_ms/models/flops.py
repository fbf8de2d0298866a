"""Analytic FLOPs of a DVT cascade, computed from its ``DVTConfig`` alone (no model is built).

"GFLOPs" here means giga multiply-accumulates (MACs), the convention of the DVT / DeiT / T2T-ViT
papers. Counted, for one 224x224 image (batch 1):

* linear layers (``tokens * in * out``): qkv, attention proj, MLP fc1/fc2, the T2T ``project``
  Linear, the Performers' kqv/proj/MLP, the feature-reuse MLPs and the classifier head (class token
  only);
* convolutions (``output positions * out * in * kernel area``): the DeiT patch convolution and the
  two 1x1 relation-reuse convolutions;
* attention products: ``q kᵀ`` and ``softmax(a) v`` (each ``heads * N * N * head_dim``);
* Performer products: the random-feature projections ``t wᵀ`` of k and q, ``kptv = vᵀ kp``,
  ``qp kptv`` and the denominator ``qp · Σ kp``;
* reuse resampling, counted as the separable map ``X -> M X Mᵀ`` with ``M`` of shape
  ``(g, g_prev)``: ``g g_prev² + g² g_prev`` MACs per resampled grid. Relations are resampled on
  the key axis for each of the ``1 + n_prev`` query rows, then on the query axis for each of the
  ``1 + n`` key columns, per head·layer channel; features once per 48 channels per block.
  The Cells do not run it that way: ``models/resample.py`` applies the same map as one product
  with the Kronecker matrix ``M ⊗ M`` (``g² g_prev²`` MACs per grid; ``diag(1, M ⊗ M)`` on both
  token axes of the relations), which is faster on every device at these grid sizes. We count the
  separable cost because it is the arithmetic the map needs, whatever the kernel: the same
  number for any implementation, as the rest of this count (the exit costs calibration and the
  budgets are matched on). The dense product executes more: on DeiT-S's last stage about 0.36
  GMACs more relation resampling (measured time is what ``benchmarks/`` report).

Not counted (the usual convention): LayerNorm, softmax, GELU, the Performer's ``exp`` and
``|t|²/2``, biases, residual/position-embedding/relation adds, divisions, concatenations and the
unfold/reshape data movement.

Tokens per stage: ``1 + grid²``. T2T intermediate grids follow the unfold arithmetic
(``conv_output_size``). The feature-reuse MLP is counted on all ``1 + n_prev`` tokens of the
previous feature, as the published code runs it before dropping the class token.

``exit_index`` is 0-based everywhere (0 is exit 1), as in ``DVTConfig.exits``.

CLI: ``dvt-flops --model NAME [key=value ...] [--json]``; ``dvt-flops --list`` lists the presets.
"""
import json
import operator
import sys

from .. import cli
from ..errors import ConfigError
from .presets import FEATURE_REUSE_DIM, FEATURE_REUSE_HIDDEN, build_config, list_presets

__all__ = ["BREAKDOWN_KEYS", "REUSE_KEYS", "stage_flops", "model_flops", "main"]

# Components of a stage's cost; the REUSE_KEYS part is what reuse adds on top of a plain ViT stage.
REUSE_KEYS = ("feature_reuse_mlp", "feature_reuse_resample", "feature_reuse_fc1",
              "relation_reuse_conv", "relation_reuse_resample")
BREAKDOWN_KEYS = ("tokenizer", "attention_linear", "attention_products", "mlp", "head") + REUSE_KEYS

_GIGA = 1e9


def _resample_macs(g_prev, g):
    """MACs of resampling one g_prev x g_prev grid to g x g as M X Mᵀ (M is g x g_prev)."""
    return g * g_prev * g_prev + g * g * g_prev


def _performer_macs(tokens, dim, emb):
    """MACs of one T2T Performer block (Token_performer) on ``tokens`` tokens of width ``dim``."""
    m = emb // 2                                  # random features (kernel ratio 0.5)
    macs = tokens * dim * 3 * emb                 # kqv Linear(dim, 3 emb)
    macs += 2 * tokens * emb * m                  # t wᵀ for k and for q
    macs += tokens * emb * m                      # kptv = vᵀ kp   (emb x m)
    macs += tokens * m * emb                      # qp kptv
    macs += tokens * m                            # den = qp · Σ_tokens kp
    macs += tokens * emb * emb                    # proj Linear(emb, emb)
    macs += 2 * tokens * emb * emb                # MLP emb -> emb -> emb
    return macs


def _tokenizer_macs(config, geometry):
    grid, dim = geometry.grid, config.embed_dim
    if config.family == "deit":
        (kernel, _, _), = geometry.splits
        return grid * grid * dim * 3 * kernel * kernel
    emb = config.token_dim
    (first_kernel, _, _), (later_kernel, _, _), _ = geometry.splits
    size1, size2, size3 = geometry.split_grids
    macs = _performer_macs(size1 * size1, 3 * first_kernel * first_kernel, emb)
    macs += _performer_macs(size2 * size2, emb * later_kernel * later_kernel, emb)
    macs += size3 * size3 * emb * later_kernel * later_kernel * dim   # project Linear
    return macs


def _check_exit_index(config, exit_index):
    try:
        index = None if isinstance(exit_index, bool) else operator.index(exit_index)
    except TypeError:
        index = None
    if index is None or not 0 <= index < config.num_exits:
        raise ValueError(f"exit_index must be an int in [0, {config.num_exits}), got {exit_index!r}")
    return index


def _stage_macs(config, exit_index):
    """Per-component MACs (ints) of stage ``exit_index``; keys are BREAKDOWN_KEYS."""
    geometry = config.exits[_check_exit_index(config, exit_index)]
    dim, depth, heads = config.embed_dim, config.depth, config.num_heads
    hidden = int(dim * config.mlp_ratio)
    tokens = geometry.num_tokens
    feature_reuse, relation_reuse = geometry.feature_reuse, geometry.relation_reuse

    parts = dict.fromkeys(BREAKDOWN_KEYS, 0)
    parts["tokenizer"] = _tokenizer_macs(config, geometry)
    parts["attention_linear"] = depth * (tokens * dim * 3 * dim + tokens * dim * dim)
    parts["attention_products"] = depth * 2 * tokens * tokens * dim   # heads * N * N * head_dim, twice
    parts["mlp"] = depth * (tokens * dim * hidden + tokens * hidden * dim)
    parts["head"] = dim * config.num_classes

    if feature_reuse or relation_reuse:
        tokens_prev = geometry.prev_num_tokens
        resample = _resample_macs(geometry.prev_grid, geometry.grid)
    if feature_reuse:
        parts["feature_reuse_mlp"] = depth * tokens_prev * (
            dim * FEATURE_REUSE_HIDDEN + FEATURE_REUSE_HIDDEN * FEATURE_REUSE_DIM)
        parts["feature_reuse_resample"] = depth * FEATURE_REUSE_DIM * resample
        parts["feature_reuse_fc1"] = depth * tokens * FEATURE_REUSE_DIM * hidden
    if relation_reuse:
        channels = heads * depth
        parts["relation_reuse_conv"] = 2 * tokens_prev * tokens_prev * channels * 3 * channels
        parts["relation_reuse_resample"] = channels * (tokens_prev + tokens) * resample
    return parts


def stage_flops(config, exit_index):
    """Cost of stage ``exit_index`` (0-based) of ``config``.

    Returns a dict: ``exit`` (1-based), ``grid``, ``tokens`` (1 + grid²), ``stage_gflops``,
    ``reuse_gflops`` (the part of ``stage_gflops`` spent on feature and relation reuse),
    ``stage_macs`` / ``reuse_macs`` (the same as exact ints) and ``breakdown`` (GMACs per
    component, keys ``BREAKDOWN_KEYS``, summing to ``stage_gflops``).
    """
    exit_index = _check_exit_index(config, exit_index)
    parts = _stage_macs(config, exit_index)
    stage = sum(parts.values())
    reuse = sum(parts[key] for key in REUSE_KEYS)
    grid = config.grids[exit_index]
    return {
        "exit": exit_index + 1,
        "grid": grid,
        "tokens": 1 + grid * grid,
        "stage_gflops": stage / _GIGA,
        "reuse_gflops": reuse / _GIGA,
        "stage_macs": stage,
        "reuse_macs": reuse,
        "breakdown": {key: value / _GIGA for key, value in parts.items()},
    }


def model_flops(config):
    """``stage_flops`` of every exit, plus ``cumulative_gflops`` / ``cumulative_macs``: the cost of
    exiting there (all stages up to and including it, each with its head)."""
    exits, total = [], 0
    for exit_index in range(config.num_exits):
        entry = stage_flops(config, exit_index)
        total += entry["stage_macs"]
        entry["cumulative_macs"] = total
        entry["cumulative_gflops"] = total / _GIGA
        exits.append(entry)
    return exits


def _format_table(name, config, exits):
    lines = [f"{name}: {config.family}, D={config.embed_dim}, depth={config.depth}, "
             f"heads={config.num_heads}, mlp_ratio={config.mlp_ratio:g}, "
             f"feature_reuse={config.feature_reuse}, relation_reuse={config.relation_reuse} "
             f"(GFLOPs = GMACs)",
             f"{'exit':>4} {'grid':>5} {'tokens':>6} {'stage':>9} {'reuse':>9} {'reuse %':>8} {'cumulative':>11}"]
    for e in exits:
        share = 100.0 * e["reuse_gflops"] / e["stage_gflops"]
        lines.append(f"{e['exit']:>4} {e['grid']:>2}x{e['grid']:<2} {e['tokens']:>6} "
                     f"{e['stage_gflops']:>9.4f} {e['reuse_gflops']:>9.4f} {share:>7.1f}% "
                     f"{e['cumulative_gflops']:>11.4f}")
    return "\n".join(lines)


_DESCRIPTION = """Analytic GFLOPs (multiply-accumulates) of each exit of a DVT cascade, from its config alone.

--list prints every registered preset: its architecture and the cost of each exit."""


def _preset_table():
    lines = [f"{'preset':<16} {'family':<6} {'D':>4} {'depth':>5} {'heads':>5} {'img':>4} {'grids':<12} "
             f"{'classes':>7} {'GFLOPs per exit (cumulative)':<30} published"]
    for name in list_presets():
        config = build_config(name)
        costs = " / ".join(f"{e['cumulative_gflops']:.3g}" for e in model_flops(config))
        grids = "/".join(str(g) for g in config.grids)
        lines.append(f"{name:<16} {config.family:<6} {config.embed_dim:>4} {config.depth:>5} {config.num_heads:>5} "
                     f"{config.img_size:>4} {grids:<12} {config.num_classes:>7} {costs:<30} "
                     f"{'yes' if name in list_presets(published=True) else 'no'}")
    return "\n".join(lines)


def _run(args):
    if args.list:
        print(_preset_table())
        return
    if args.model is None:
        raise ConfigError("--model NAME is required (--list lists the presets)")
    config = build_config(args.model, **cli.parse_overrides(args.overrides))
    exits = model_flops(config)
    if args.json:
        keys = ("stage_gflops", "reuse_gflops", "cumulative_gflops")
        print(json.dumps({"exits": [{key: e[key] for key in keys} for e in exits]}))
    else:
        print(_format_table(args.model, config, exits))


def main(argv=None):
    parser = cli.argument_parser("dvt_ms.models.flops", _DESCRIPTION)
    parser.add_argument("--model", choices=list_presets(), help="preset name")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="architecture override, value read as YAML (e.g. num_classes=10 "
                             "feature_reuse=false patch_grids=[4,6,8])")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_intermixed_args(argv)
    return cli.run(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
