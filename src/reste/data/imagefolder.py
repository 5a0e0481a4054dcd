"""torchvision's ``ImageFolder`` as reste reads ImageNet: visible class folders and files only.

The classes live at module level (not inside the function that builds them) so that a DataLoader can
send the data set to worker processes started by ``spawn`` or ``forkserver`` (macOS's and Windows's
default, and Linux's from Python 3.14), which pickle it by its module and name. This module imports
torchvision; :mod:`reste.data.formats` imports it only when an image folder is read.
"""

from __future__ import annotations

import os
from typing import Callable

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

__all__ = ["VisibleImageFolder", "VisibleFile", "IMG_EXTENSIONS", "image_files_below"]


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

    @staticmethod
    def make_dataset(directory: str, class_to_idx: dict[str, int], extensions: tuple[str, ...] | None = None,
                     is_valid_file: Callable[[str], bool] | None = None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        """torchvision's samples, in its order: each class folder's files that ``is_valid_file`` takes (or that
        have one of ``extensions``), folder by folder sorted by path, then by name; but the folders walked by
        :func:`_folders_below`."""
        valid = is_valid_file or (lambda path: has_file_allowed_extension(path, extensions))
        samples = []
        for target in sorted(class_to_idx):
            top = os.path.join(directory, target)
            if os.path.isdir(top):
                samples += [(path, class_to_idx[target]) for path in _files_below(top) if valid(path)]
        held = {i for _, i in samples}
        empty = sorted(target for target, i in class_to_idx.items() if i not in held)
        if empty and not allow_empty:
            raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}")
        return samples


def image_files_below(top: str) -> list[str]:
    """The image files an image folder's class folder ``top`` would hold: those :class:`VisibleFile` takes, below
    ``top`` too, in the loader's order (folder by folder sorted by path, then by name). What ``reste predict`` reads
    from a folder of images."""
    valid = VisibleFile(top)
    return [path for path in _files_below(top) if valid(path)]


def _files_below(top: str) -> list[str]:
    """The paths of the files below ``top`` (:func:`_folders_below`), folder by folder, then by name."""
    return [os.path.join(root, name) for root, names in _folders_below(top) for name in sorted(names)]


def _folders_below(top: str) -> list[tuple[str, list[str]]]:
    """``(folder, names of its files)`` for ``top`` and each folder below it, sorted by folder: what
    ``os.walk(top, followlinks=True)`` gives, which torchvision walks, but for two things. Links to folders are
    followed (class folders linked in from another disk are usual), into each real folder once: a link back up
    (``l -> ..``) made that walk branch without end. And a FIFO, socket or device is no file: reading a FIFO named
    x.JPEG blocked for ever. (A dangling link stays a file, as before: reading it names it.)"""
    found, seen, todo = [], set(), [top]
    while todo:
        folder = todo.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name, reverse=True)  # the stack pops the first name first
        except OSError:  # gone, or not listable: os.walk passes it by too
            continue
        files = []
        for entry in entries:
            try:
                if entry.is_dir():
                    todo.append(entry.path)
                    continue
                regular = entry.is_file()
            except OSError:  # a link to itself (ELOOP): a file to os.walk
                regular = False
            if regular or not os.path.exists(entry.path):  # (a dangling or looping link does not exist)
                files.append(entry.name)
        found.append((folder, files))
    return sorted(found)
