"""Each exit as a deployable graph: images and the previous exit's reuse tensors in, logits and
what the next exit reuses out, all with a dynamic batch dimension."""
import mindspore as ms
from mindspore import nn, ops

from ..contract.signature import exit_signature

__all__ = ["ExitGraph"]


class ExitGraph(nn.Cell):
    """Exit ``exit_index`` as deployed: ``(images, *reuse inputs) -> (logits, *reuse outputs)``,
    in the order of the contract's ``exit_signature``. Inputs and outputs are float32 whatever precision the
    stage computes in."""

    def __init__(self, model, exit_index):
        super().__init__(auto_prefix=False)
        signature = exit_signature(model.config, exit_index)
        input_names = [item["name"] for item in signature["inputs"]]
        output_names = [item["name"] for item in signature["outputs"]]
        self.stage = model.stages[exit_index]
        self.takes_feature = "prev_feature" in input_names
        self.takes_relations = "prev_relations" in input_names
        self.gives_feature = "feature" in output_names
        self.gives_relations = "relations" in output_names

    def construct(self, images, *reused):
        prev_feature = reused[0] if self.takes_feature else None
        prev_relations = reused[-1] if self.takes_relations else None
        logits, feature, relations = self.stage(images, prev_feature, prev_relations)
        outputs = (ops.cast(logits, ms.float32),)
        if self.gives_feature:
            outputs = outputs + (ops.cast(feature, ms.float32),)
        if self.gives_relations:
            outputs = outputs + (ops.cast(relations, ms.float32),)
        return outputs
