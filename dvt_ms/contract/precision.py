"""The compute dtypes an export may have (the manifest's ``precision``).

Inputs and outputs of every exit graph are float32 whatever it is, so deployment treats every
precision alike; float16 / bfloat16 graphs compute as MindSpore's O2 (docs/deployment.md).
A manifest written before the field existed is float32.
"""
__all__ = ["PRECISIONS", "DEFAULT_PRECISION"]

PRECISIONS = ("float32", "float16", "bfloat16")
DEFAULT_PRECISION = "float32"
