"""User-facing errors: one clear line naming the input and what is wrong, of bounded length."""

from __future__ import annotations

SHOWN_CHARACTERS = 200
"""The most characters of an offending value an error line shows."""


def shown(value: object, limit: int = SHOWN_CHARACTERS) -> str:
    """``value`` as an error line shows it: ``repr``-escaped (no line breaks or control characters),
    cut to ``limit`` characters with a count of the rest."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def one_line(text: str, limit: int = 4 * SHOWN_CHARACTERS) -> str:
    """``text`` as one line: line breaks as spaces, other unprintable characters escaped, cut to ``limit``."""
    flat = " ".join(text.splitlines())
    cut = flat if len(flat) <= limit else f"{flat[:limit]}... ({len(flat) - limit} more characters)"
    return "".join(character if character.isprintable() else repr(character)[1:-1] for character in cut)


class FbmlError(Exception):
    """An input or usage problem the CLI reports as one line, without a traceback."""


class InputError(FbmlError):
    """A file or URI that cannot be read as the expected data."""

    def __init__(self, source: object, problem: str) -> None:
        super().__init__(one_line(f"{source}: {problem}"))
        self.source = str(source)
        self.problem = problem


class ContractError(FbmlError):
    """A frame that breaks its contract where it enters a stage: the contract, the column and the check."""

    def __init__(self, contract: str, column: str | None, check: str, detail: str = "") -> None:
        where = f"column {shown(column)}" if column else "the frame"
        super().__init__(one_line(f"{contract}: {where} fails {check}" + (f" ({detail})" if detail else "")))
        self.contract = contract
        self.column = column
        self.check = check
