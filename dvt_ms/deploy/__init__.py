"""Deployment: preprocessing, the early-exit engine on exported MindIR, inference over files, and
the Python API (``Classifier``, README "Python API").

Needs MindSpore, numpy, Pillow and PyYAML only: what an export holds is the contract's
(``dvt_ms.contract``); nothing of the model code, training, calibration, export, the data
pipeline or mindcv is imported (docs/deployment.md)."""
from .classifier import Answer, Classifier

__all__ = ["Answer", "Classifier"]
