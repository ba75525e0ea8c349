"""The one exception type that means "the user gave us something wrong".

The CLI turns a :class:`UserError` into a single line on stderr and a non-zero exit; every other
exception is a bug and keeps its traceback. Raise it at the door, naming the file and the value at fault.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a missing file, a wrong shape, an unknown config key, ..."""
