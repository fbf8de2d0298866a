"""What binds thresholds to the model they were calibrated on: a digest of the architecture and
one of the weights.

Calibration writes the digest into ``thresholds.yaml``, the converter into the published
results beside a converted checkpoint, export into ``manifest.yaml``. Thresholds are a property
of the weights: another training run of the same preset (or a 64-wide demo network that calls
itself ``dvt_deit_small``) sends other images out early, so export and inference refuse
thresholds whose digest is not the model's, with one line naming both, unless told to accept them.
"""
import dataclasses
import hashlib
import json
import logging

import numpy as np

from ..errors import ManifestError
from ..schema import Field

__all__ = ["ACCEPT_MISMATCH_FLAG", "DIGEST_FIELDS", "architecture_digest", "weights_digest", "digest_of",
           "model_digest", "digest_problems", "check_bound"]

LOGGER = logging.getLogger(__name__)

#: The command-line flag that accepts thresholds of other weights (named in the refusal).
ACCEPT_MISMATCH_FLAG = "--accept_thresholds_mismatch"

# Architecture fields that only training uses: they do not change what the weights compute.
_TRAINING_ONLY = ("drop_rate", "drop_path_rate")
_SHOWN = 12     # hex digits of a digest shown in messages
_SCHEME = "sha256:"

#: A recorded digest's fields (each ``sha256:<hex>``: ``digest_problems``).
DIGEST_FIELDS = (Field("architecture", "str", required=True, doc="sha256 of the architecture"),
                 Field("weights", "str", required=True, doc="sha256 of the weights"))


def architecture_digest(architecture):
    """sha256 of the architecture (a mapping of plain values, e.g. ``dataclasses.asdict(DVTConfig)``),
    its training-only fields left out."""
    plain = {key: value for key, value in architecture.items() if key not in _TRAINING_ONLY}
    text = json.dumps(plain, sort_keys=True, default=list, separators=(",", ":"))
    return _SCHEME + hashlib.sha256(text.encode()).hexdigest()


def weights_digest(named_arrays):
    """sha256 over ``(name, array)`` pairs in name order: each name, dtype, shape and bytes."""
    hasher = hashlib.sha256()
    for name, array in sorted(named_arrays, key=lambda item: item[0]):
        array = np.ascontiguousarray(array)
        hasher.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        hasher.update(array.tobytes())
    return _SCHEME + hasher.hexdigest()


def digest_of(architecture, named_arrays):
    """``{"architecture": ..., "weights": ...}``, as the documents record it."""
    return {"architecture": architecture_digest(architecture), "weights": weights_digest(named_arrays)}


def model_digest(model):
    """The digest of a model Cell as loaded: ``model.config`` (a dataclass) and its parameters.
    Take it before any precision conversion."""
    return digest_of(dataclasses.asdict(model.config),
                     ((param.name, param.asnumpy()) for param in model.get_parameters()))


def digest_problems(digest, where="digest"):
    """What the fields alone cannot say about a recorded digest whose fields were checked
    (``digest``: its valid values): each is ``sha256:<hex>``."""
    return [f"{where}.{key} must be '{_SCHEME}<hex>', got {digest[key]!r}"
            for key in ("architecture", "weights") if key in digest and not digest[key].startswith(_SCHEME)]


def _short(digest):
    return (f"weights {digest['weights'][:7 + _SHOWN]}..., architecture "
            f"{digest['architecture'][:7 + _SHOWN]}...")


def check_bound(thresholds_digest, thresholds_source, model_digest_, model_source, accept=False):
    """Refuse thresholds calibrated on other weights (or recording none): a ManifestError naming
    both sides, or a warning when ``accept``."""
    if thresholds_digest is not None and model_digest_ is not None and thresholds_digest == model_digest_:
        return
    if thresholds_digest is None:
        problem = (f"{thresholds_source} records no digest of the weights it was calibrated with "
                   f"(written by an older version?), so it cannot be matched to {model_source}")
    elif model_digest_ is None:
        problem = (f"{model_source} records no digest of its weights (exported by an older version?), so "
                   f"{thresholds_source} cannot be matched to it")
    else:
        problem = (f"{thresholds_source} was calibrated with {_short(thresholds_digest)}; {model_source} has "
                   f"{_short(model_digest_)}")
    if accept:
        LOGGER.warning("%s; using the thresholds anyway (%s)", problem, ACCEPT_MISMATCH_FLAG)
        return
    raise ManifestError(f"{problem}: thresholds of other weights exit the wrong images; calibrate this model "
                        f"(run_eval.sh) or pass {ACCEPT_MISMATCH_FLAG} to use them anyway")
