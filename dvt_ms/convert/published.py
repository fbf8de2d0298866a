"""Convert the authors' published PyTorch DVT checkpoints to MindSpore, without PyTorch.

    python -m dvt_ms.convert SRC.pth.tar DST.ckpt --model NAME [key=value ...]

Writes DST.ckpt and, beside it, DST.published.yaml with the checkpoint's published results
(flops, anytime_classification, dynamic_threshold, budgeted_batch_classification), the model it
belongs to and the digest of the converted weights: run_export.sh --thresholds takes it as the
thresholds document of these weights (``dvt_ms.contract.thresholds.thresholds_from_published``). Any missing, unexpected or wrongly shaped key is an error and nothing is written.
"""
import dataclasses
import logging
import os
import re

import numpy as np

from ..contract.digest import digest_of
from ..errors import CheckpointFormatError, ConversionError
from ..fileio import OutputFileKind, atomic_write, atomic_write_text, check_output_file
from ..models.presets import build_config, list_presets
from .torch_pickle import load_torch_checkpoint

__all__ = ["PUBLISHED_STAGE_PREFIXES", "torch_to_mindspore_name", "convert_state_dict",
           "convert_checkpoint", "published_results_path", "guess_published_model"]

LOGGER = logging.getLogger(__name__)

# The published checkpoints name their three exits by token count, coarse to fine.
PUBLISHED_STAGE_PREFIXES = ("less_less_token", "less_token", "normal_token")

# PyTorch module path -> our Cell path, inside one stage. Applied in order.
_RENAMES = (
    (r"^tokens_to_token\.attention(\d)\.", r"tokenizer.performer\1."),
    (r"^tokens_to_token\.project\.", "tokenizer.project."),
    (r"^patch_embed\.proj\.", "tokenizer.proj."),
    (r"(performer\d)\.w$", r"\1.random_features"),
    (r"(performer\d)\.mlp\.0\.", r"\1.mlp.fc1."),
    (r"(performer\d)\.mlp\.2\.", r"\1.mlp.fc2."),
    (r"\.feature_resuse_mlp\.0\.", ".feature_reuse.norm."),   # sic: the published key says "resuse"
    (r"\.feature_resuse_mlp\.1\.", ".feature_reuse.mlp."),
    (r"^relation_reuse_conv\.0\.", "relation_reuse.expand."),
    (r"^relation_reuse_conv\.2\.", "relation_reuse.reduce."),
)


# A key part only one family's published checkpoints have.
_FAMILY_MARKERS = (("t2t", ".tokens_to_token."), ("deit", ".patch_embed."))
_LISTED_KEYS = 5   # keys named per kind of problem; the rest are counted


def guess_published_model(torch_state):
    """(family, preset name or None) a published state dict looks like, from its key names (the
    tokenizer) and the last exit's width and depth; (None, None) if it looks like neither family."""
    keys = [f".{key}" for key in torch_state]
    family = next((name for name, marker in _FAMILY_MARKERS if any(marker in key for key in keys)), None)
    if family is None:
        return None, None
    last = PUBLISHED_STAGE_PREFIXES[-1]
    cls_token = torch_state.get(f"{last}.cls_token")
    width = int(np.shape(cls_token)[-1]) if cls_token is not None else None
    depth = len({key.split(".")[2] for key in torch_state if key.startswith(f"{last}.blocks.")})
    presets = [name for name in _family_presets(family)
               if (build_config(name).embed_dim, build_config(name).depth) == (width, depth)]
    return family, (presets[0] if presets else None)


def _listed(keys, separator=", "):
    shown = separator.join(keys[:_LISTED_KEYS])
    return f"{shown} and {len(keys) - _LISTED_KEYS} more" if len(keys) > _LISTED_KEYS else shown


def torch_to_mindspore_name(torch_key, mindspore_names):
    """Our parameter name for a published key, or None if the key has no place in the model.

    LayerNorm's weight/bias are MindSpore's gamma/beta: which applies is read off the model."""
    prefix, _, rest = torch_key.partition(".")
    if prefix not in PUBLISHED_STAGE_PREFIXES or not rest:
        return None
    for pattern, replacement in _RENAMES:
        rest = re.sub(pattern, replacement, rest)
    name = f"stages.{PUBLISHED_STAGE_PREFIXES.index(prefix)}.{rest}"
    if name in mindspore_names:
        return name
    layernorm_names = {".weight": ".gamma", ".bias": ".beta"}
    for torch_suffix, ms_suffix in layernorm_names.items():
        if name.endswith(torch_suffix):
            candidate = name[: -len(torch_suffix)] + ms_suffix
            if candidate in mindspore_names:
                return candidate
    return None


def convert_state_dict(torch_state, model_shapes, source="checkpoint"):
    """Map a published state dict onto ``model_shapes`` ({our name: shape}); returns {our name: array}.

    Raises ConversionError naming the missing, unexpected and wrongly shaped keys (the first few of
    each with a count; all of them in its ``mismatches`` attribute)."""
    converted, unexpected, mis_shaped = {}, [], {}
    for torch_key, value in torch_state.items():
        name = torch_to_mindspore_name(torch_key, model_shapes)
        if name is None:
            unexpected.append(torch_key)
            continue
        array = np.asarray(value)
        if tuple(array.shape) != tuple(model_shapes[name]):
            mis_shaped[name] = f"{torch_key}: checkpoint {tuple(array.shape)}, model {tuple(model_shapes[name])}"
            continue
        converted[name] = array.astype(np.float32, copy=False)
    missing = sorted(set(model_shapes) - set(converted) - set(mis_shaped))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (model parameters with no checkpoint entry): {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (not in the model): {_listed(unexpected)}")
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} wrongly shaped keys: " + _listed(list(mis_shaped.values()), "; "))
    if problems:
        error = ConversionError(f"{source} does not fit the model:\n  " + "\n  ".join(problems))
        error.mismatches = {"missing": missing, "unexpected": unexpected, "wrongly_shaped": list(mis_shaped.values())}
        raise error
    return converted


def _family_presets(family):
    """The presets of ``family`` the authors published checkpoints for."""
    return [name for name in list_presets(published=True) if build_config(name).family == family]


def model_parameter_shapes(model):
    return {param.name: tuple(param.shape) for param in model.get_parameters()}


def published_results_path(ckpt_path):
    """Where the converter puts a checkpoint's published results: X.ckpt -> X.published.yaml."""
    root, _ = os.path.splitext(str(ckpt_path))
    return root + ".published.yaml"


def _is_published_results(path):
    """A results file the converter wrote: YAML whose keys start with model, overrides, digest."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            start = handle.read(4096)
    except OSError:
        return False
    return start.startswith("model:") and "\noverrides:" in start and "\ndigest:" in start


# What the converter recognises as its own outputs (the only existing files it replaces,
# docs/outputs.md): a results file it wrote, and a checkpoint beside one (never a trained checkpoint).
PUBLISHED_RESULTS_FILE = OutputFileKind("a converter's results file", _is_published_results)
CONVERTED_CHECKPOINT = OutputFileKind(
    "a checkpoint the converter wrote (it has no .published.yaml beside it)",
    lambda path: _is_published_results(published_results_path(path)))


def _published_results(checkpoint, model_name, overrides, digest):
    def plain(value):
        return np.asarray(value, dtype=np.float64).tolist()

    results = {"model": model_name, "overrides": dict(overrides), "digest": digest}
    for key in ("flops", "anytime_classification", "dynamic_threshold", "budgeted_batch_classification"):
        if key in checkpoint:
            results[key] = plain(checkpoint[key])
    return results


def convert_checkpoint(src, dst, model_name, overrides=None):
    """Convert ``src`` (.pth.tar) to ``dst`` (.ckpt) for preset ``model_name`` with ``overrides``.

    Returns the published results written beside ``dst``. Writes nothing on any error."""
    import mindspore as ms
    import yaml
    from ..models.cascade import DVT

    overrides = dict(overrides or {})
    if not str(dst).endswith(".ckpt"):
        raise ConversionError(f"destination must end in .ckpt, got {dst}")
    check_output_file(dst, kind=CONVERTED_CHECKPOINT)
    check_output_file(published_results_path(dst), kind=PUBLISHED_RESULTS_FILE)
    checkpoint = load_torch_checkpoint(src)
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointFormatError(f"{src}: not a published DVT checkpoint (no 'model_state_dict'; found {found})")
    config = build_config(model_name, **overrides)
    state = checkpoint["model_state_dict"]
    family, preset = guess_published_model(state)
    if family is not None and family != config.family:
        raise ConversionError(f"{src} looks like a DVT {family} checkpoint, not a {config.family} one like "
                              f"{model_name}: try --model {preset or ' / '.join(_family_presets(family))}")
    model = DVT(config)
    try:
        arrays = convert_state_dict(state, model_parameter_shapes(model), source=str(src))
    except ConversionError as error:
        if preset is not None and preset != model_name and not overrides:
            published = build_config(preset)
            raise ConversionError(f"{src} looks like a {preset} checkpoint (width "
                                  f"{published.embed_dim}, {published.depth} blocks per exit): try "
                                  f"--model {preset}\n{error}") from None
        raise
    results = _published_results(checkpoint, model_name, overrides,
                                 digest_of(dataclasses.asdict(config), arrays.items()))

    params = [{"name": name, "data": ms.Tensor(array)} for name, array in arrays.items()]
    atomic_write(str(dst), lambda tmp: ms.save_checkpoint(params, tmp))
    yaml_path = published_results_path(dst)
    try:
        atomic_write_text(yaml_path, yaml.safe_dump(results, sort_keys=False, default_flow_style=None))
    except BaseException:
        os.remove(dst)   # keep the pair consistent: no checkpoint without its results
        raise
    LOGGER.info("wrote %s (%d tensors) and %s", dst, len(params), yaml_path)
    return results
