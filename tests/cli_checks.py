"""What the tests of the command line share: a refusal is one line on stderr and exit status 2."""

from __future__ import annotations

from reste.cli import main


def one_line_error(capsys, *argv: str) -> str:
    """Run ``reste ARGV`` in this process; assert it refused in one ``reste: error:`` line (exit status 2) and
    return that line."""
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("reste: error: "), err
    return lines[0]
