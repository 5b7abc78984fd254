"""Frames checked against their contracts where they enter a stage: the one place pandera runs.

pandera checks only the schema of a LazyFrame, and its ``PANDERA_*`` environment variables can turn
checks off or down; here every check runs, schema and data, on an eager frame, whatever they say.
A frame that fails raises ``ContractError`` naming the contract, the column and the check; pandera's
own errors never leave this module. pandera (and with it pandas) is imported at the first check, so a
streamed stage that never checks an eager frame never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar, cast

import polars as pl

from fbml.errors import ContractError, shown

if TYPE_CHECKING:
    import pandera.errors
    import pandera.polars as pa
    from pandera.typing.polars import DataFrame

Model = TypeVar("Model", bound="pa.DataFrameModel")
EXAMPLES = 3


def validated(frame: object, contract: type[Model]) -> DataFrame[Model]:
    """``frame`` checked against ``contract`` (schema and data); ``ContractError`` at the first check it fails."""
    if not isinstance(frame, pl.DataFrame):
        raise ContractError(contract.__name__, None, "is_polars_dataframe", f"got {type(frame).__name__}")
    import pandera.errors
    from pandera.config import ValidationDepth, config_context

    try:
        with config_context(validation_enabled=True, validation_depth=ValidationDepth.SCHEMA_AND_DATA):
            return contract.validate(frame)
    except pandera.errors.SchemaError as error:
        raise contract_error(contract.__name__, error) from None


def rows_of(frame: DataFrame[Model], keep: pl.Expr | pl.Series) -> DataFrame[Model]:
    """The rows of a checked frame where ``keep`` holds, still checked: every contract's checks are
    per row or of uniqueness, and both hold for any subset of the rows."""
    return cast("DataFrame[Model]", frame.filter(keep))


def contract_error(contract: str, error: pandera.errors.SchemaError) -> ContractError:
    """pandera's error as a ``ContractError``: the column, the check and a few failing values."""
    from pandera.errors import SchemaErrorReason as _Reason

    reason = error.reason_code
    if reason in (_Reason.COLUMN_NOT_IN_DATAFRAME, _Reason.COLUMN_NOT_IN_SCHEMA):
        check = "present" if reason == _Reason.COLUMN_NOT_IN_DATAFRAME else "in_contract"
        return ContractError(contract, str(error.failure_cases), check)
    if reason == _Reason.WRONG_DATATYPE:
        expected = getattr(error.schema, "dtype", error.check)
        return ContractError(contract, error.column_name, f"dtype {expected}", f"got {error.failure_cases}")
    if reason == _Reason.SERIES_CONTAINS_NULLS:
        return ContractError(contract, error.column_name, "not_null", _examples(error.failure_cases))
    if reason == _Reason.COLUMN_NOT_ORDERED:
        return ContractError(contract, None, "column_order", shown(str(error).splitlines()[0]))
    check = getattr(error.check, "name", None) or str(error.check or (reason.value if reason else "contract"))
    return ContractError(contract, error.column_name, check, _examples(error.failure_cases))


def _examples(failure_cases: object) -> str:
    """How many values failed and the first few, each shown bounded."""
    if not isinstance(failure_cases, pl.DataFrame) or failure_cases.width == 0:
        return ""
    values = failure_cases.to_series(0)
    return f"{values.len()} failing, e.g. " + ", ".join(shown(value, 60) for value in values.head(EXAMPLES).to_list())
