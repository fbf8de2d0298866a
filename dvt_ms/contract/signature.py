"""Each exit graph's signature: the names and shapes of what it takes and gives.

Exit k takes ``images`` (B, 3, S, S) and, for k > 0, what exit k-1 passes on: ``prev_feature``
(B, 1+n_prev, D) and/or ``prev_relations`` (B, H·L, 1+n_prev, 1+n_prev). It gives ``logits``
(B, C) and what exit k+1 reuses: ``feature`` and/or ``relations``. The batch is dynamic (-1).
Export builds the graphs from ``exit_signature``; deployment checks the manifest against the rule.
"""
from ..schema import Field

__all__ = ["IMAGES", "LOGITS", "REUSED_AS", "TENSOR_FIELDS", "exit_signature", "signature_problems"]

IMAGES = "images"
LOGITS = "logits"
#: What exit k passes on (its outputs after the logits) -> the name exit k+1 takes it under.
REUSED_AS = {"feature": "prev_feature", "relations": "prev_relations"}

#: One input or output of an exit graph, as the manifest records it.
TENSOR_FIELDS = (Field("name", "str", required=True, doc="the tensor's name"),
                 Field("shape", "ints", required=True, doc="[-1, sizes...], -1 the dynamic batch"))


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


def _tensor_list_problems(tensors, where, first, first_shape, later_names):
    problems = []
    for index, tensor in enumerate(tensors):
        allowed = (first,) if index == 0 else later_names
        if "name" in tensor and tensor["name"] not in allowed:
            problems.append(f"{where}[{index}].name must be {' or '.join(allowed)}, got {tensor['name']!r}")
        shape = tensor.get("shape")
        if shape is not None and (shape[0] != -1 or not all(size > 0 for size in shape[1:])):
            problems.append(f"{where}[{index}].shape must be [-1, sizes...] (dynamic batch), got {list(shape)}")
        elif index == 0 and shape is not None and None not in first_shape and list(shape) != first_shape:
            problems.append(f"{where}[0].shape must be {first_shape}, got {list(shape)}")
    return problems


def signature_problems(exit_info, where, img_size, num_classes, previous):
    """What the fields alone cannot say about one exit's ``inputs`` and ``outputs`` in a manifest
    (``exit_info``: its valid values; ``img_size`` or ``num_classes`` None if unknown): images and
    logits first, then exactly what the ``previous`` exit (its valid values, None for the first
    exit) passes on."""
    if "inputs" not in exit_info or "outputs" not in exit_info:
        return []
    problems = _tensor_list_problems(exit_info["inputs"], f"{where}.inputs", IMAGES, [-1, 3, img_size, img_size],
                                     tuple(REUSED_AS.values()))
    problems += _tensor_list_problems(exit_info["outputs"], f"{where}.outputs", LOGITS, [-1, num_classes],
                                      tuple(REUSED_AS))
    if previous is None or "outputs" in previous:   # unknown if the previous exit's outputs are invalid
        given = [{"name": REUSED_AS.get(item.get("name"), item.get("name")), "shape": list(item.get("shape", ()))}
                 for item in (previous["outputs"][1:] if previous else [])]
        taken = [{"name": item.get("name"), "shape": list(item.get("shape", ()))} for item in exit_info["inputs"][1:]]
        if taken != given:
            problems.append(f"{where}.inputs must take, after images, what the previous exit passes on: {given}")
    return problems
