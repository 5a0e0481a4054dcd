"""How reste's lines word a number of things: a duration (``42s``, ``5m``, ``26h00m``) and a count with its noun
(``1 epoch``, ``3 epochs``), a list of names cut short, runs of epochs (``1-3, 7``), a batch split into
micro-batches, and where in a run a checkpoint was taken."""

from __future__ import annotations

from collections.abc import Sequence

#: seconds between the plain progress lines of long work when no bar is drawn (a log file): training's and
#: evaluation's (``reste.engine.STEP_LINE_EVERY``, which starts at this) and reste predict's
LINE_EVERY = 300.0


def duration(seconds: float) -> str:
    """``42s`` under a minute, ``5m`` under an hour, else ``26h00m``: a 1000-epoch run reads ``26h00m``, not
    ``93612s``."""
    if seconds < 59.5:
        return f"{seconds:.0f}s"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def count(n: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``, ``0 epochs`` (a regular noun: an ``s`` for any number but one)."""
    return f"{n} {noun}{'s' * (n != 1)}"


def listed(names: Sequence[str], limit: int = 6) -> str:
    """``a, b, c``: the first ``limit`` of ``names``, then ``, ...`` where there are more."""
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def series(words: Sequence[str], last: str = "and") -> str:
    """``a, b and c`` (``last``: ``"or"`` gives ``a, b or c``); a single word alone."""
    return f"{', '.join(words[:-1])} {last} {words[-1]}" if len(words) > 1 else "".join(words)


def split_batch(batch_size: int, accumulate: int) -> str:
    """``", in 4 micro-batches of 16"`` after a batch that ``--accumulate`` splits; nothing for one that it does not
    (``accumulate`` 1, or None: a run recorded before the setting)."""
    n = accumulate or 1
    return f", in {n} micro-batches of {batch_size // n}" if n > 1 else ""


def batchnorm_across(sync_bn: bool) -> str:
    """What a run of several processes normalises over: ``synchronised BatchNorm`` or ``BatchNorm per process``
    (its first line and ``reste show`` say it alike)."""
    return "synchronised BatchNorm" if sync_bn else "BatchNorm per process"


def taken_at(epoch: int, step: int | None) -> str:
    """Where a checkpoint was taken: ``epoch 3`` at an epoch's end, ``step 50 of epoch 2`` inside one (``epoch`` the
    epochs it finished, ``step`` the steps of the next)."""
    return f"step {step} of epoch {epoch + 1}" if step else f"epoch {epoch}"


def gist(text: str, limit: int = 160) -> str:
    """The first non-empty line of ``text`` (an error of torch's, quoted in one of reste's lines), at most ``limit``
    characters: a longer one is cut at a space and ends in ``...``, never inside a word."""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    if len(line) <= limit:
        return line
    cut = line.rfind(" ", 0, limit - 3)
    return line[:cut if cut > 0 else limit - 3].rstrip(" ,;:") + "..."


def spans(epochs: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` (ascending) as ``1-3, 7``."""
    out: list[str] = []
    for e in epochs:
        if out and int(out[-1].split("-")[-1]) == e - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{e}"
        else:
            out.append(str(e))
    return ", ".join(out)


# A spreadsheet takes a cell that starts with one of these for a formula, and runs it (=HYPERLINK(...) sends the
# sheet's cells away): text that does (a label or grid value of a received sweep.json, a class or file name of a
# received export or image folder) is written to a CSV table after a "'" (read as text; sec2 8, review formats1 #4).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(text: str) -> str:
    """``text`` as a CSV cell a spreadsheet reads as text: after a ``'`` where it would start a formula."""
    return "'" + text if text.startswith(FORMULA_START) else text


def printable(text: object) -> str:
    """``text`` with each character a terminal would act on (ESC and the other control characters, format
    characters, line and paragraph separators) written as its escape, as ``repr`` writes it: a class, file, model or
    setting name from a received file could otherwise set the window's title, erase or move lines (review sec3 #6).
    Spaces of every kind stay as they are: a file name's no-break space is the file's (review diff28, suggestion 5)."""
    import unicodedata

    text = str(text)
    if text.isprintable():
        return text
    return "".join(repr(c)[1:-1] if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") else c
                   for c in text)
