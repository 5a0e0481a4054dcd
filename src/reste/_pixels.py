"""Pixels of an image file as 8 bits: what the training data (``reste.data.formats``) and a packed model's
raw inputs (``reste.export.inputs``) both read. NumPy, and Pillow where an image is given."""

from __future__ import annotations

from typing import Any

import numpy as np

#: The Pillow formats reste reads image files in: those of the extensions an image folder's files may have
#: (torchvision's ``IMG_EXTENSIONS``: .jpg .jpeg .png .ppm .pgm .bmp .tif .tiff .webp). Pillow picks the decoder
#: from a file's first bytes, whatever its name: without this list a ".JPEG" holding PostScript is run by
#: Ghostscript (and a file in any of Pillow's other formats reaches a decoder no data set needs). A camera's JPEG
#: holding more than one picture (Pillow's MPO) is opened by Pillow's JPEG opener, so "JPEG" takes it too.
IMAGE_FORMATS = ("JPEG", "PNG", "PPM", "BMP", "TIFF", "WEBP")


def open_image(fp: Any) -> Any:
    """``PIL.Image.open(fp)`` as reste's readers open an image: only in :data:`IMAGE_FORMATS`, and refused before
    its pixels are decoded when it has more than ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow's limit, about 89 million
    pixels, 9459 x 9459: far above any data set's photographs), without Pillow's own warning. Pillow itself only
    warns up to twice that, and a 328 KB 16-bit PNG of 13000 x 13000 then took 4.8 GB (and as much in each
    DataLoader worker). Raises Pillow's ``UnidentifiedImageError`` (an ``OSError``) or ``DecompressionBombError``,
    which the readers word with the file's name (:func:`unreadable`)."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():  # Pillow's warning between its limit and twice it: reste's refusal below says it
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(fp, formats=IMAGE_FORMATS)
    width, height = image.size
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        image.close()
        raise Image.DecompressionBombError(f"Image size ({width * height} pixels) exceeds limit of {limit} pixels "
                                           "(PIL.Image.MAX_IMAGE_PIXELS)")
    return image


def unreadable(err: BaseException) -> str:
    """Why an image file could not be read, as the readers' one-line errors say it: where Pillow found none of
    :data:`IMAGE_FORMATS` (its own message only repeats the file's name), which formats reste reads; else the
    first 100 characters of Pillow's message."""
    from PIL import UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        return f"not an image in a format reste reads: {', '.join(IMAGE_FORMATS)}"
    return " ".join(str(err).split())[:100] or type(err).__name__


def eight_bit(image: Any) -> Any:
    """A 16- or 32-bit integer greyscale Pillow image scaled to 8 bits ("L"), and a float one ("F": values in [0, 1]
    scaled by 255, values in [0, 255] as they are, others a ``ValueError``); any other image as it is. An integer
    image's values are taken as 16 bits (0..65535), or as 8 bits where a 32-bit one ("I", not from a PGM/PPM) holds
    none above 255; values outside 0..65535 are a ``ValueError`` (not clipped: no range is known to scale them by).
    (Pillow's own ``convert`` clips an integer image at 255: a 16-bit one comes out nearly all white; it truncates
    floats: one in [0, 1] comes out all black.)"""
    if image.mode == "I" or image.mode.startswith("I;16"):
        from PIL import Image

        values = np.asarray(image)
        high = values.max(initial=0)
        if high > 65535 or values.min(initial=0) < 0:  # a 32-bit image's (or a signed one's): clipping them lost them
            raise ValueError("integer pixels outside [0, 65535]: save it as 8 or 16 bits")
        # a PGM/PPM of maxval above 255 opens as "I", already scaled by Pillow to 0..65535: its range is the format's,
        # not a guess from its values (review datafid #1: a dark 16-bit PGM was read as 8-bit, up to 257x too bright)
        sixteen = image.mode.startswith("I;16") or getattr(image, "format", None) == "PPM"
        top = 65535 if sixteen or high > 255 else 255
        # round(value * 255 / top) in integers: top / 255 (257 or 1) is odd, so no value lies half way and
        # (value + step // 2) // step is what rounding the float quotient gave, without float64 copies of the image
        step = top // 255
        scaled = np.empty(values.shape, np.uint32)
        np.clip(values, 0, top, out=scaled, casting="unsafe")  # (exact: the values are in 0..top)
        scaled += step // 2
        scaled //= step
        return Image.fromarray(scaled.astype(np.uint8), "L")
    if image.mode == "F":  # float greyscale (a float TIFF): Pillow's convert truncates [0, 1) to 0, an all-black image
        from PIL import Image

        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all() or values.min(initial=0) < 0 or values.max(initial=0) > 255:
            raise ValueError("float pixels outside [0, 1] and [0, 255] (or not finite): save it as 8 or 16 bits")
        top = 1.0 if values.max(initial=0) <= 1 else 255.0  # [0, 1] floats, or 8-bit values kept as floats
        return Image.fromarray(np.rint(values * (255.0 / top)).astype(np.uint8), "L")
    return image
