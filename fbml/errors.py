"""User-facing errors: one clear line naming the input and what is wrong."""

from __future__ import annotations


class FbmlError(Exception):
    """An input or usage problem the CLI reports as one line, without a traceback."""


class InputError(FbmlError):
    """A file or URI that cannot be read as the expected data."""

    def __init__(self, source: object, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = str(source)
        self.problem = problem
