"""torchvision's ``ImageFolder`` as reste reads ImageNet: visible class folders and files only.

The classes live at module level (not inside the function that builds them) so that a DataLoader can
send the data set to worker processes started by ``spawn`` or ``forkserver`` (macOS's and Windows's
default, and Linux's from Python 3.14), which pickle it by its module and name. This module imports
torchvision; :mod:`reste.data.formats` imports it only when an image folder is read.
"""

from __future__ import annotations

import os

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

__all__ = ["VisibleImageFolder", "VisibleFile", "IMG_EXTENSIONS"]


class VisibleFile:
    """``is_valid_file`` for a split's folder ``top``: an image extension, and nothing hidden on the file's
    way below ``top`` (macOS's ._ files, a class folder's .ipynb_checkpoints/). ImageFolder joins the paths it
    gives onto ``top``: the rest is split as it is (no relpath: it would ask for the working directory per
    file)."""

    def __init__(self, top: str):
        self.top = top

    def __call__(self, file: str) -> bool:
        top = self.top
        below = file[len(top):] if file.startswith(top) else os.path.relpath(file, top)
        return (not any(p.startswith(".") for p in below.split(os.sep))
                and has_file_allowed_extension(file, IMG_EXTENSIONS))


class VisibleImageFolder(ImageFolder):
    """An ImageFolder whose classes are the visible sub-folders (not .ipynb_checkpoints, .Trash-1000, ...)."""

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"no class folder in {directory}")
        return classes, {c: i for i, c in enumerate(classes)}
