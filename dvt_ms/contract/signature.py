"""Each exit graph's signature: the names and shapes of what it takes and gives.

Exit k takes ``images`` (B, 3, S, S) and, for k > 0, what exit k-1 passes on: ``prev_feature``
(B, 1+n_prev, D) and/or ``prev_relations`` (B, H·L, 1+n_prev, 1+n_prev). It gives ``logits``
(B, C) and what exit k+1 reuses: ``feature`` and/or ``relations``. The batch is dynamic (-1).
Export builds the graphs from ``exit_signature``; deployment checks the manifest against the rule.
"""
from .fields import Fields, show

__all__ = ["IMAGES", "LOGITS", "REUSED_AS", "exit_signature", "check_exit_signature"]

IMAGES = "images"
LOGITS = "logits"
#: What exit k passes on (its outputs after the logits) -> the name exit k+1 takes it under.
REUSED_AS = {"feature": "prev_feature", "relations": "prev_relations"}


def exit_signature(config, exit_index):
    """``{"inputs": [...], "outputs": [...]}`` of exit ``exit_index``: each a ``{name, shape}``
    (-1 = dynamic batch). ``config`` is the model's ``DVTConfig`` (read by attribute: img_size,
    embed_dim, num_heads, depth, num_classes, num_exits, exits)."""
    def feature(grid):
        return [-1, 1 + grid * grid, config.embed_dim]

    def relations(grid):
        tokens = 1 + grid * grid
        return [-1, config.num_heads * config.depth, tokens, tokens]

    geometry = config.exits[exit_index]
    inputs = [{"name": IMAGES, "shape": [-1, 3, config.img_size, config.img_size]}]
    if geometry.feature_reuse:
        inputs.append({"name": REUSED_AS["feature"], "shape": feature(geometry.prev_grid)})
    if geometry.relation_reuse:
        inputs.append({"name": REUSED_AS["relations"], "shape": relations(geometry.prev_grid)})
    outputs = [{"name": LOGITS, "shape": [-1, config.num_classes]}]
    if exit_index + 1 < config.num_exits:
        successor = config.exits[exit_index + 1]
        if successor.feature_reuse:
            outputs.append({"name": "feature", "shape": feature(geometry.grid)})
        if successor.relation_reuse:
            outputs.append({"name": "relations", "shape": relations(geometry.grid)})
    return {"inputs": inputs, "outputs": outputs}


def _check_tensor_list(fields, value, field, first, first_shape, later_names):
    if not isinstance(value, list) or not value:
        fields.fail(field, f"expected a list of {{name, shape}}, got {show(value)}")
    for index, item in enumerate(value):
        where = f"{field}[{index}]"
        fields.mapping(item, where, ("name", "shape"))
        allowed = (first,) if index == 0 else later_names
        if item["name"] not in allowed:
            fields.fail(f"{where}.name", f"{show(item['name'])} is not {' or '.join(allowed)}")
        shape = item["shape"]
        if (not isinstance(shape, list) or not shape or shape[0] != -1
                or not all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in shape[1:])):
            fields.fail(f"{where}.shape", f"expected [-1, sizes...] (dynamic batch), got {show(shape)}")
    if value[0]["shape"] != first_shape:
        fields.fail(f"{field}[0].shape", f"{value[0]['shape']} is not {first_shape}")


def check_exit_signature(fields: Fields, exit_info, field, img_size, num_classes, previous):
    """Check one exit's ``inputs`` and ``outputs`` in a manifest: images and logits first, then
    exactly what the ``previous`` exit (its manifest entry, or None) passes on."""
    _check_tensor_list(fields, exit_info["inputs"], f"{field}.inputs", IMAGES, [-1, 3, img_size, img_size],
                       tuple(REUSED_AS.values()))
    _check_tensor_list(fields, exit_info["outputs"], f"{field}.outputs", LOGITS, [-1, num_classes],
                       tuple(REUSED_AS))
    given = [{"name": REUSED_AS[item["name"]], "shape": item["shape"]}
             for item in (previous["outputs"][1:] if previous else [])]
    if exit_info["inputs"][1:] != given:
        fields.fail(f"{field}.inputs", f"after images it must take what the previous exit passes on, {given}")
