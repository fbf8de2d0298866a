"""Deployment preprocessing: one image file -> the (3, H, W) float32 array the exits take."""
import numpy as np

__all__ = ["Preprocessor"]


class Preprocessor:
    """The evaluation transforms the manifest names (the same ops as the validation pipeline)."""

    def __init__(self, preprocess):
        from ..data.transforms import eval_transforms
        self.transforms = eval_transforms(preprocess["img_size"], preprocess["crop_pct"], preprocess["interpolation"])

    def __call__(self, path):
        """The (3, H, W) float32 image, or raises ValueError with the reason it cannot be read."""
        try:
            with open(path, "rb") as handle:
                data = np.frombuffer(handle.read(), np.uint8)
            for op in self.transforms:
                data = op(data)
        except (OSError, RuntimeError, ValueError) as err:
            raise ValueError(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__) from None
        return np.asarray(data, np.float32)
