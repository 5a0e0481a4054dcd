"""Images for a packed model: image files and ``.npy`` arrays, raw or already preprocessed.

* A float array is preprocessed already: (N, C, H, W), what the model takes.
* A uint8 array holds raw pixels in the data set's units (0 .. ``pixel_scale``): (N, C, H, W),
  (N, H, W) for one channel, or one image ((C, H, W), or (H, W) for one channel).
* An image file (JPEG, PNG, BMP, PPM/PGM, TIFF or WebP, read with Pillow) is converted to the model's channels
  (grey or RGB), scaled with its aspect ratio kept (bilinear), its shorter side to the header's ``resize`` where
  it records one (ImageNet: 256, as its validation images are) and else to just cover the model's input size, and
  cropped at the centre; its pixels run from 0 to 255.

Raw pixels get the preprocessing the export header records (:class:`reste.export.ir.Preprocessing`):
``(pixel / white - mean[c]) / std[c]`` in float32, in the order the training data takes it,
with ``white`` the header's ``pixel_scale`` for an array and 255 for an 8-bit image file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .._pixels import eight_bit, open_image, unreadable
from ..errors import UsageError
from .ir import Preprocessing, invalid_preprocessing

#: The white of an 8-bit image file.
IMAGE_WHITE = 255.0
_MODES = {1: "L", 3: "RGB"}


def normalise(raw: np.ndarray, prep: Preprocessing, white: float) -> np.ndarray:
    """(N, C, H, W) pixels -> float32 ``(pixel / white - mean) / std`` per channel (divide, subtract, divide)."""
    shape = (1, -1, 1, 1)
    mean = np.asarray(prep.mean, np.float32).reshape(shape)
    std = np.asarray(prep.std, np.float32).reshape(shape)
    x = raw.astype(np.float32) / np.float32(white)
    return (x - mean) / std


def raw_batch(images: np.ndarray, size: tuple[int, int, int], what: str) -> np.ndarray:
    """A uint8 array as (N, C, H, W): (N, H, W) and (H, W) are one-channel images, (C, H, W) one image."""
    channels = size[0]
    if images.ndim == 3:
        images = images[:, None] if channels == 1 else images[None]
    elif images.ndim == 2 and channels == 1:
        images = images[None, None]
    if images.ndim != 4:
        layouts = "(N, C, H, W), (N, H, W), (H, W)" if channels == 1 else "(N, C, H, W) or (C, H, W)"
        raise UsageError(f"{what} holds a uint8 array of shape {images.shape}; pass raw images as {layouts}")
    return images


def read_image(path: str | os.PathLike, size: tuple[int, int, int], resize: int | None = None) -> np.ndarray:
    """The image file as uint8 (1, C, H, W) for a model of input ``size`` (C, H, W): its channels,
    scaled with the aspect ratio kept, its shorter side to ``resize`` (torchvision's ``Resize(resize)``) or, without
    it, to just cover (H, W), and cropped at the centre (``CenterCrop``)."""
    channels, height, width = size
    if channels not in _MODES:
        raise UsageError(f"the model takes {channels}-channel images; an image file gives 1 (grey) or 3 (RGB); "
                         "pass a .npy array")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise UsageError("reading image files needs Pillow (pip install pillow); pass a .npy array") from None
    try:
        with open_image(path) as opened:
            # the pixels as stored, an EXIF orientation not applied: as the training's and evaluation's reader
            # (formats._read_image, torchvision's ImageFolder) reads them, so a photo is the image the model saw
            image = eight_bit(opened).convert(_MODES[channels])
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # (SyntaxError: Pillow's broken PNG chunk, review rev14 #8, as the training's reader takes it)
        raise UsageError(f"{path} is neither a .npy array nor an image file reste can read "
                         f"({unreadable(err)})") from None
    w, h = image.size
    if resize is not None:  # torchvision's Resize(resize): the shorter side to resize, the longer one truncated
        cover = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
        cover = (max(width, cover[0]), max(height, cover[1]))
    else:
        scale = max(width / w, height / h)
        cover = (max(width, round(w * scale)), max(height, round(h * scale)))
    if cover != (w, h):
        image = image.resize(cover, Image.BILINEAR)
    left, top = (cover[0] - width) // 2, (cover[1] - height) // 2
    if resize is not None:  # CenterCrop's rounding
        left, top = int(round((cover[0] - width) / 2.0)), int(round((cover[1] - height) / 2.0))
    if cover != (width, height):
        image = image.crop((left, top, left + width, top + height))
    pixels = np.asarray(image, dtype=np.uint8).reshape(height, width, channels)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))[None]


def is_image_file(path: str | os.PathLike) -> bool:
    """Anything but a ``.npy`` file is read as an image."""
    return Path(path).suffix.lower() != ".npy"


def image_files(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The image files that ``paths`` name, in their order: a file as given (read as an image whatever its name);
    a folder, the image files below it as an image folder's loader takes them (an image extension, nothing hidden
    on the way, sorted folder by folder; :func:`reste.data.imagefolder.image_files_below`). A path that does not
    exist, or a folder without an image file, is refused in one line."""
    files: list[str] = []
    for given in paths:
        if not os.fspath(given):  # Path("") is ".": an unset variable would walk the whole current folder (rev14 #11)
            raise UsageError("an image path is empty (an unset variable?); pass image files or folders of them")
        path = Path(given)
        if path.is_dir():
            from ..data.imagefolder import IMG_EXTENSIONS, image_files_below

            found = image_files_below(str(path))
            if not found:
                raise UsageError(f"{path} is a folder without image files ({' '.join(IMG_EXTENSIONS)}, hidden ones "
                                 "left out); pass image files or folders holding them")
            files += found
        elif path.is_file():
            files.append(str(path))
        else:
            raise not_a_file(path, "image")
    return files


def not_a_file(path: Path, what: str) -> UsageError:
    """The refusal of ``path``, given as a ``what`` file, that is not a plain file: missing, or a pipe or device
    (``/dev/stdin``, a shell's ``<(...)``), which was said not to exist (review formats1 #2)."""
    if not path.exists():
        return UsageError(f"{what} file {path} does not exist")
    return UsageError(f"{path} is not a file (a pipe, a device or a socket): reste predict reads files; save "
                      f"it to one and pass that")


class ImageFileInputs:
    """The model inputs of image files, one per index: ``(index, float32 (C, H, W))``, or ``(index, the one-line
    reason)`` for a file that cannot be read, so that a DataLoader's worker hands it back instead of raising.
    A class at module level: a DataLoader started by ``spawn`` (macOS, Windows) pickles it by its name."""

    def __init__(self, files: Sequence[str], size: tuple[int, ...] | None, prep: Preprocessing | None,
                 meta: dict | None = None):
        self.files, self.size, self.prep, self.meta = list(files), size, prep, meta

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | str]:
        try:
            return index, model_inputs(None, self.files[index], self.size, self.prep, self.meta)[0]
        except UsageError as err:
            return index, str(err)


def check_shape(size: tuple[int, ...] | None, shape: tuple[int, ...], what: str, one: bool = False) -> None:
    """Refuse images whose (C, H, W) is not the model's ``size`` (when it is known); ``one``: the array was one
    image, not a batch (the transpose it needs)."""
    if size and tuple(shape) != tuple(size):
        fix = "pass images of its shape"
        if len(size) == 3 and tuple(shape) == (size[1], size[2], size[0]):  # (H, W, C): how images are often stored
            fix = ("it looks channels-last (H, W, C): transpose it to (C, H, W), array.transpose(2, 0, 1)" if one else
                   "they look channels-last (H, W, C): transpose them to (C, H, W), e.g. array.transpose(0, 3, 1, 2) "
                   "for (N, H, W, C)")
        raise UsageError(f"{what} holds images of shape {tuple(shape)} but the model takes {tuple(size)}; {fix}")


def as_float32(images: np.ndarray) -> np.ndarray:
    """A float array as float32 in native byte order and C order, what ``torch.from_numpy`` takes (an array of another
    byte order, e.g. from a big-endian tool, or with negative strides it refuses), copied only where it must be."""
    return np.ascontiguousarray(images, dtype=np.float32)


def nonfinite_images(images: np.ndarray) -> tuple[int, str] | None:
    """(how many images of the batch ``images`` hold a NaN or an infinite value, the indices of the first five as
    text), or None where none does."""
    bad = ~np.isfinite(images.reshape(len(images), -1)).all(axis=1) if images.ndim and images.size else None
    if bad is None or not bad.any():
        return None
    return int(bad.sum()), ", ".join(str(int(i)) for i in np.flatnonzero(bad)[:5])


def model_inputs(images: np.ndarray | None, path: str | os.PathLike, size: tuple[int, ...] | None,
                 prep: Preprocessing | None, meta: dict | None = None) -> np.ndarray:
    """Float32 (N, C, H, W) model inputs (N, *size: (N, C, L) for a model of 1-D layers), of the model's input
    ``size`` when known, from a loaded ``.npy`` array (``images``) or, with ``images=None``, from the image file
    at ``path``; raw pixels get ``prep`` (``meta``: the header's, for a refusal that says what is wrong)."""
    raw = images is None or images.dtype == np.uint8
    if not raw:
        ranks = (len(size) + 1,) if size else (4, 3)  # no size recorded: images, or a 1-D model's signals
        if images.ndim not in ranks or not np.issubdtype(images.dtype, np.floating):
            hint = (" (integers: raw pixels as uint8, e.g. array.astype(np.uint8); other values, such as int16 "
                    "audio, preprocessed as float32)" if np.issubdtype(images.dtype, np.integer) else "")
            shape = ("(N, C, H, W) or (N, C, L)" if not size else "(N, C, H, W)" if len(size) == 3
                     else f"(N, {', '.join(map(str, size))})")
            raise UsageError(f"{path} must hold preprocessed float inputs {shape} or raw uint8 pixels, "
                             f"got shape {images.shape} of {images.dtype}{hint}")
        check_shape(size, images.shape[1:], str(path))
        out = as_float32(images)
        bad = nonfinite_images(out)
        if bad:  # a NaN or inf pixel gives a class anyway (sign(NaN) and argmax are defined): refuse it
            raise UsageError(f"{path} holds NaN or infinite values in {bad[0]} of its {len(out)} images "
                             f"(first at index {bad[1]}); fix or drop those images")
        if prep is not None and looks_raw(out, prep):  # (newuser3: raw digits saved as float scored 51%, not 97.5%)
            warnings.warn(f"{path} holds float values that look like raw pixels (whole numbers from 0 to "
                          f"{float(out.max()):g}), but a float array is taken as preprocessed (normalised); if they "
                          "are raw pixels, save them as uint8 (array.astype(np.uint8)) so that the model's own "
                          "preprocessing is applied", UserWarning, stacklevel=2)
        return out
    size3 = check_takes_raw(size, prep, meta, "an image file" if images is None else "raw uint8 images")
    if images is None:
        return normalise(read_image(path, size3, prep.resize), prep, IMAGE_WHITE)
    return raw_inputs(images, size3, prep, str(path))


def looks_raw(images: np.ndarray, prep: Preprocessing) -> bool:
    """Whether float ``images`` look like raw pixels of the model that records ``prep`` rather than its normalised
    inputs: whole numbers from 0 up to more than 1 and at most its ``pixel_scale`` (normalised images have fractions
    and negatives), where its normalisation would change them (not where it is the identity: review diff16 #4)."""
    if images.size == 0:
        return False
    top, low = float(images.max()), float(images.min())
    if not (low >= 0 and 1 < top <= prep.pixel_scale and bool(np.all(images == np.round(images)))):
        return False
    pixels = np.arange(int(top) + 1, dtype=np.uint8)  # the whole pixel values, as an image of each channel
    batch = np.broadcast_to(pixels[None, None, :, None], (1, len(prep.mean), len(pixels), 1))
    return not np.allclose(normalise(batch, prep, prep.pixel_scale), batch, rtol=1e-5, atol=1e-5)


def check_takes_raw(size: tuple[int, ...] | None, prep: Preprocessing | None, meta: dict | None,
                    what: str = "an image file") -> tuple[int, int, int]:
    """The (C, H, W) raw images become for a model of input ``size`` whose export records ``prep`` (``meta``: its
    header); a model that records no preprocessing, or whose inputs no image file gives (``what``), is refused in
    one line."""
    if prep is None and size is not None and len(size) != 3:  # a signal's or features' model (review newuser2 #7)
        shape = ", ".join(["N", *map(str, size)])
        raise UsageError(f"the packed model takes inputs of shape ({shape}), not images: it cannot take {what}; "
                         "pass them preprocessed, as float32 in a .npy file")
    if prep is None:
        invalid = invalid_preprocessing(meta or {})
        raise UsageError(f"the packed model {invalid or 'does not record its preprocessing (input size, mean, std)'}, "
                         f"so it cannot take {what}; export it again with `reste export CHECKPOINT` (or in Python, "
                         "export_model(..., meta=reste.export.ir.Preprocessing(input_size, mean, std, "
                         "pixel_scale).to_meta())), or pass preprocessed float images (N, C, H, W) in a .npy file")
    size3 = tuple(size) if size and len(size) == 3 else prep.input_size
    if what == "an image file" and size3[0] not in _MODES:
        raise UsageError(f"the model takes {size3[0]}-channel images; an image file gives 1 (grey) or 3 (RGB); "
                         "pass a .npy array")
    return size3


def raw_inputs(images: np.ndarray, size: tuple[int, int, int], prep: Preprocessing, what: str) -> np.ndarray:
    """uint8 pixels in any of ``raw_batch``'s layouts -> float32 (N, C, H, W) model inputs of ``size``, with
    ``prep``'s normalisation; other image shapes are refused."""
    batch = raw_batch(images, size, what)
    if images.ndim != batch.ndim:  # a layout the shape alone does not tell: say how the array was read
        what = f"{what} (a uint8 array of shape {images.shape}, read as {len(batch)} image{'s' * (len(batch) != 1)})"
    check_shape(size, batch.shape[1:], what, one=images.ndim == 3 and batch.shape[0] == 1 and size[0] != 1)
    check_pixel_range(batch, prep, what)
    return normalise(batch, prep, prep.pixel_scale)


def check_pixel_range(images: np.ndarray, prep: Preprocessing, what: str) -> None:
    """Refuse uint8 pixels above the recorded ``pixel_scale``, the white of the data set's raw units (digits: 16):
    they cannot be its pixels, and the likely mistake, 8-bit images (0..255) given to such a model, would be
    normalised far outside anything it saw and silently cost accuracy."""
    if prep.pixel_scale >= 255 or images.size == 0:
        return
    top = int(images.max())
    if top > prep.pixel_scale:
        scale = f"{prep.pixel_scale:g}"
        raise UsageError(f"{what} holds pixel values up to {top}, but the model's raw pixels run 0..{scale} (the "
                         f"export's pixel_scale, its data set's white); 8-bit images (0..255) need rescaling first "
                         f"(np.round(images * {scale} / 255).astype(np.uint8)), or pass them as an image file")
