"""The exit rule, one place for calibration, offline evaluation and the deployment engine.

An image's confidence at exit k is the largest of its float32 softmax scores; it is answered at
the first exit whose confidence reaches that exit's threshold (``confidence >= threshold``, both
float32), and the last exit answers whatever reaches it. Computing the softmax here, on the host,
for both sides means equal logits give bit-equal confidences on both sides of a threshold.
"""
import numpy as np

__all__ = ["NEVER", "ALWAYS", "softmax", "accepts", "exit_indices", "top_classes"]

#: A threshold no confidence reaches: nobody exits there.
NEVER = np.float32(1e8)
#: The last exit's threshold as written in thresholds documents: everybody still running answers.
ALWAYS = np.float32(-1e8)


def softmax(logits):
    """Softmax over the last axis in float32: the scores every confidence is taken from."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def accepts(confidence, threshold, is_last):
    """Whether an exit answers the images of ``confidence`` (float32) at ``threshold``: the last
    exit always does (there is nowhere further to go), any other when confidence >= threshold."""
    confidence = np.asarray(confidence, np.float32)
    if is_last:
        return np.ones(confidence.shape, bool)
    return confidence >= np.asarray(threshold, np.float32)


def exit_indices(confidence, thresholds):
    """The exit (0-based) answering each image: ``confidence`` (K, N) with ``thresholds`` (K,)
    gives (N,); thresholds (M, K) (M settings at once) give (M, N)."""
    confidence = np.asarray(confidence, np.float32)
    thresholds = np.asarray(thresholds, np.float32)
    num_exits = confidence.shape[0]
    exits = np.full(thresholds.shape[:-1] + confidence.shape[1:], num_exits - 1, dtype=np.int64)
    for k in reversed(range(num_exits - 1)):   # so that the first exit that accepts wins
        exits = np.where(accepts(confidence[k], thresholds[..., k, None], is_last=False), k, exits)
    return exits


def top_classes(probs, k):
    """The ``k`` most probable classes of each row of ``probs`` (B, C) and their scores, best first
    (ties to the lower class index, like argmax)."""
    order = np.argsort(-np.asarray(probs), axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(np.asarray(probs), order, axis=1)
