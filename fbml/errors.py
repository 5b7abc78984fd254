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


class ContractError(FbmlError):
    """A frame that breaks its contract where it enters a stage: the contract, the column and the check."""

    def __init__(self, contract: str, column: str | None, check: str, detail: str = "") -> None:
        where = f"column {column!r}" if column else "the frame"
        super().__init__(f"{contract}: {where} fails {check}" + (f" ({detail})" if detail else ""))
        self.contract = contract
        self.column = column
        self.check = check
