"""The one exception type the CLI turns into a single line and exit code 2."""

from __future__ import annotations


class EdgekitError(Exception):
    """A problem with the user's input or environment that they can fix.

    ``str(err)`` is one line: what went wrong, where, and what to do about it.
    """

    exit_code = 2

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what, self.fix = what, fix
        super().__init__(f"{what}; {fix}" if fix else what)
