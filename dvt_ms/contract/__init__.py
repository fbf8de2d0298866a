"""The export/deploy contract: what calibration, export and deployment must agree on, written once.

numpy and PyYAML only (plus ``dvt_ms.errors`` and the pure-Python ``dvt_ms.schema``, whose one
validation style its documents use: every problem at once, each named by its path), on the floor
above the foundation: calibration, export and deployment import it, it imports none of them.

- ``exit_rule``: float32 softmax, ``confidence >= threshold``, the last exit always answers.
- ``preprocessing``: the preprocessing record (size, crop, interpolation, mean, std, the resize
  rule) and each preset's defaults.
- ``signature``: each exit graph's input and output names and shapes.
- ``precision``: the compute dtypes an export may have.
- ``digest``: what binds thresholds to the architecture and weights they were calibrated with.
- ``thresholds``: the thresholds document (build, read, check, the one selection rule).
- ``manifest``: ``manifest.yaml`` (build, load, check).
- ``yamlio``: the documents' YAML in (errors naming the file and line) and out (no anchors).
"""
