"""Pixels of an image file as 8 bits: what the training data (``reste.data.formats``) and a packed model's
raw inputs (``reste.export.inputs``) both read. NumPy, and Pillow where an image is given."""

from __future__ import annotations

from typing import Any

import numpy as np


def eight_bit(image: Any) -> Any:
    """A 16- or 32-bit integer greyscale Pillow image scaled to 8 bits ("L"); any other image as it is. (Pillow's
    own ``convert`` clips such an image at 255: a 16-bit one comes out nearly all white.)"""
    if image.mode == "I" or image.mode.startswith("I;16"):
        from PIL import Image

        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    return image
