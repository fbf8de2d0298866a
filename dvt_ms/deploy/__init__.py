"""Deployment: the manifest contract, preprocessing and the early-exit engine on exported MindIR.

Runs without the model code (``dvt_ms.models``) and without the training stack."""
