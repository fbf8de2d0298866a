"""Small helpers shared by the command-line tools (FLOPs counter, converter, ...)."""
import yaml

__all__ = ["parse_overrides"]


def _parse_value(text):
    """YAML value of ``text``; plain strings that are numbers in Python's eyes become floats.

    PyYAML follows YAML 1.1, where ``1e-6`` (no dot) is a string, not a float; we accept it as a
    float since that is what a user typing ``layernorm_eps=1e-6`` means.
    """
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_overrides(items):
    """Parse ``key=value`` strings into a dict, values read as YAML.

    ``["num_classes=10", "feature_reuse=false", "patch_grids=[4,6,8]"]`` gives
    ``{"num_classes": 10, "feature_reuse": False, "patch_grids": [4, 6, 8]}``. ``items`` may be
    None or empty (an empty dict is returned). Raises ``ValueError`` naming the offending item if
    an item has no ``=``, an empty key, a value that is not valid YAML, or repeats a key.
    Which keys are allowed is up to the caller (e.g. ``presets.build_config`` checks them).
    """
    overrides = {}
    for item in items or ():
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"malformed override {item!r}: expected key=value, e.g. num_classes=10")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ValueError(f"malformed override {item!r}: empty key before '='")
        if key in overrides:
            raise ValueError(f"override {item!r} repeats key {key!r}")
        try:
            overrides[key] = _parse_value(text)
        except yaml.YAMLError as err:
            reason = str(err).splitlines()[0]
            raise ValueError(f"malformed override {item!r}: value is not valid YAML ({reason})") from None
    return overrides
