"""The export/deploy contract: what calibration, export and deployment must agree on, written once.

numpy and PyYAML only (plus ``dvt_ms.errors``), on the lowest floor of the package: calibration,
export and deployment import it, it imports none of them.

- ``exit_rule``: float32 softmax, ``confidence >= threshold``, the last exit always answers.
- ``preprocessing``: the preprocessing record (size, crop, interpolation, mean, std, the resize
  rule) and each preset's defaults.
- ``signature``: each exit graph's input and output names and shapes.
- ``precision``: the compute dtypes an export may have.
- ``digest``: what binds thresholds to the architecture and weights they were calibrated with.
- ``thresholds``: the thresholds document (build, read, check, the one selection rule).
- ``manifest``: ``manifest.yaml`` (build, load, check).
- ``fields``: field-by-field checks whose errors name the file and the field; YAML in and out.
"""
