"""Early-exit calibration: the published threshold search (``search``, numpy only), every exit's
scores over a dataset, and the calibration report with deployable thresholds."""
