"""User-facing errors.

``UsageError`` is raised for bad input that the user can fix (an unknown name, a
missing data set, a corrupted checkpoint, ...). Its message is one line that
says what is wrong and what to do; the command line prints it on stderr and
exits with status 2, without a traceback. It subclasses ``ValueError`` so
library callers can catch it either way.
"""


class UsageError(ValueError):
    """Bad input the user can fix; the message is one self-contained line."""
