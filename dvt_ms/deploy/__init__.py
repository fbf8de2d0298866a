"""Deployment: the manifest contract, preprocessing and the early-exit engine on exported MindIR.

Needs MindSpore, numpy, Pillow and PyYAML only: nothing of the model code, training, the data
pipeline or mindcv is imported (docs/deployment.md)."""
