"""Per-exit top-1 / top-5 accuracy of a cascade on a validation loader.

Hits are counted inside the compiled graph (only K x 2 integers leave the device per batch);
under data parallel every rank counts its shard and the totals are summed across ranks.
"""
import mindspore as ms
import numpy as np
from mindspore import nn, ops

from .runtime import sum_over_ranks

__all__ = ["ExitHits", "evaluate"]


class ExitHits(nn.Cell):
    """``(images, labels) -> (K, 2)`` int32: top-1 and top-k hits of every exit in the batch."""

    def __init__(self, model, num_exits, top_k=5):
        super().__init__(auto_prefix=False)
        self.model = model
        self.num_exits = num_exits
        self.top_k = top_k

    def construct(self, images, labels):
        hits = ()
        for logits in self.model(images):
            _, best = ops.topk(ops.cast(logits, ms.float32), self.top_k)
            correct = ops.cast(best == ops.expand_dims(labels, 1), ms.int32)
            hits += (ops.stack([correct[:, 0].sum(), correct.sum()]),)
        return ops.stack(hits)


def evaluate(exit_hits, batches, distributed=False):
    """(top1, top5) lists of percentages, one per exit, over ``batches`` on all ranks.

    ``batches`` yields (images, labels, fresh) as ``dvt_ms.data.checked_batches`` does: rows that are
    copies standing in for unreadable images (fresh False) count neither as seen nor as hits.
    ``exit_hits`` is an ``ExitHits`` over the model in eval mode; reuse one so its graph compiles once.
    """
    hits = np.zeros((exit_hits.num_exits, 2), np.int64)
    seen = 0
    for images, labels, fresh in batches:
        if not fresh.all():
            labels = ms.Tensor(np.where(fresh, labels.asnumpy(), -1).astype(np.int32))
        hits += exit_hits(images, labels).asnumpy()
        seen += int(np.count_nonzero(fresh))
    totals = np.concatenate([hits.ravel(), [seen]]).astype(np.float32)
    if distributed:
        totals = sum_over_ranks(totals)
    hits, seen = totals[:-1].reshape(hits.shape), max(totals[-1], 1.0)
    return [float(x) for x in 100.0 * hits[:, 0] / seen], [float(x) for x in 100.0 * hits[:, 1] / seen]
