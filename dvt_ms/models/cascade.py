"""The DVT cascade: K stages with growing token grids; stage k reuses stage k-1."""
from mindspore import nn
from mindcv.models.registry import register_model

from .presets import build_config, list_presets
from .stage import DVTStage

__all__ = ["DVT", "create_model"]


class DVT(nn.Cell):
    """Runs every exit on the same images and returns their logits as a tuple, exit 1 first.

    Early exit at inference runs the exported stages one by one (``dvt_ms.deploy``)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.stages = nn.CellList([DVTStage(config, geometry) for geometry in config.exits])

    def no_weight_decay(self):
        """Parameter names mindcv's ``norm_and_bias`` filter exempts from weight decay besides norms
        and biases: class tokens and position embeddings, as DeiT's and T2T-ViT's own recipes do. The
        DVT authors' runs decay them (``weight_decay_filter: ndim1_and_bias``, ``train/optim.py``)."""
        return [param.name for param in self.trainable_params()
                if param.name.endswith(("cls_token", "pos_embed"))]

    def construct(self, images):
        logits, feature, relations = self.stages[0](images)
        all_logits = (logits,)
        for stage in self.stages[1:]:
            logits, feature, relations = stage(images, feature, relations)
            all_logits = all_logits + (logits,)
        return all_logits


def create_model(name, **overrides):
    """Build preset ``name`` with architecture ``overrides`` (any ``DVTConfig`` field but ``family``)."""
    return DVT(build_config(name, **overrides))


def _mindcv_entry(name):
    """mindcv.create_model's entry for preset ``name``: it always passes pretrained, num_classes
    (1000 unless told) and in_channels."""
    def entry(pretrained=False, num_classes=1000, in_channels=3, **overrides):
        if pretrained:
            raise ValueError(f"{name}: no download here; convert the published checkpoint with "
                             "`python -m dvt_ms.convert` and pass checkpoint_path=... instead")
        if in_channels != 3:
            raise ValueError(f"{name}: DVT takes RGB images (in_channels=3), got in_channels={in_channels}")
        return create_model(name, num_classes=num_classes, **overrides)
    entry.__name__ = entry.__qualname__ = name
    return entry


for _name in list_presets():   # every preset is a mindcv model too
    register_model(_mindcv_entry(_name))
