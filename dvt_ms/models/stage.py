"""One exit of the cascade: tokenizer, transformer blocks with the reuse paths, norm and head."""
import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import TruncatedNormal, initializer

from .layers import Block, dense, layer_norm
from .reuse import FeatureReuse, RelationReuse
from .tokenizers import build_tokenizer, position_embedding

__all__ = ["DVTStage"]


class DVTStage(nn.Cell):
    """One exit of a DVT cascade, built from its ``ExitGeometry`` (``config.exits[k]``).

    ``construct(images, prev_feature, prev_relations)`` returns ``(logits, feature, relations)``:
    the feature is the last block's output before the final norm (B, 1+n, D) and the relations are
    every block's attention logits concatenated along the head axis (B, H·L, 1+n, 1+n) — exactly
    what the next stage reuses. The previous stage's tensors are ignored where this stage's reuse
    path is switched off (and may then be None).
    """

    def __init__(self, config, geometry):
        super().__init__()
        self.num_heads = config.num_heads
        self.tokenizer = build_tokenizer(config, geometry)
        self.cls_token = Parameter(initializer(TruncatedNormal(0.02), [1, 1, config.embed_dim], ms.float32))
        self.pos_embed = position_embedding(config, geometry)
        self.pos_drop = nn.Dropout(p=config.drop_rate)

        def feature_reuse():
            if not geometry.feature_reuse:
                return None
            return FeatureReuse(config.embed_dim, geometry.prev_grid, geometry.grid, config.layernorm_eps,
                                config.drop_rate)

        drop_path_rates = np.linspace(0.0, config.drop_path_rate, config.depth)
        self.blocks = nn.CellList([
            Block(config.embed_dim, config.num_heads, config.mlp_ratio, config.qkv_bias, config.layernorm_eps,
                  drop=config.drop_rate, drop_path_rate=float(rate), feature_reuse=feature_reuse())
            for rate in drop_path_rates])
        self.relation_reuse = (RelationReuse(config.num_heads * config.depth, geometry.prev_grid, geometry.grid)
                               if geometry.relation_reuse else None)
        self.uses_feature_reuse = geometry.feature_reuse
        self.norm = layer_norm(config.embed_dim, config.layernorm_eps)
        self.head = dense(config.embed_dim, config.num_classes)

    def construct(self, images, prev_feature=None, prev_relations=None):
        tokens = self.tokenizer(images)
        cls_tokens = ops.broadcast_to(self.cls_token, (tokens.shape[0], -1, -1))
        x = self.pos_drop(ops.concat((cls_tokens, tokens), axis=1) + self.pos_embed)

        reused_relations = None
        if self.relation_reuse is not None:
            reused_relations = self.relation_reuse(prev_relations)
        reused_feature = prev_feature if self.uses_feature_reuse else None

        relation_biases = (None,) * len(self.blocks)
        if reused_relations is not None:   # one Split, not a slice per block
            relation_biases = ops.split(reused_relations, self.num_heads, axis=1)
        relations = ()
        for index, block in enumerate(self.blocks):
            x, relation = block(x, reused_feature, relation_biases[index])
            relations = relations + (relation,)

        logits = self.head(self.norm(x)[:, 0])
        return logits, x, ops.concat(relations, axis=1)
