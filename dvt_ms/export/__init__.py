"""Export: each exit as a MindIR graph with a dynamic batch, plus the deployment manifest."""
