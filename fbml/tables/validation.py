"""Frames checked against their contracts where they enter a stage: the one place pandera runs, and the
checks of the same contracts as plain polars predicates (``contracts.rules``) where pandera's import
would cost more than the work.

pandera checks only the schema of a LazyFrame, and its ``PANDERA_*`` environment variables can turn
checks off or down; here every check runs, schema and data, on an eager frame, whatever they say.
A frame that fails raises ``ContractError`` naming the contract, the column and the check; pandera's
own errors never leave this module. pandera (and with it pandas) is imported at the first check, so a
streamed stage that never checks an eager frame never loads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar, cast

import polars as pl
from contracts.rules import RowRule, failed_rule, row_failures

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


def rules_checked(frame: pl.DataFrame, contract: str, schema: pl.Schema, rules: tuple[RowRule, ...], unique: str) -> pl.DataFrame:
    """``frame`` checked by the plain polars predicates of ``contract`` (no pandera): ``schema``'s columns
    and dtypes in its order, every row passing ``rules``, no value of the column ``unique`` twice;
    ``ContractError`` naming the contract, column and check at the first it fails."""
    _check_columns(frame.schema, contract, schema)
    raise_rule_failures(contract, frame.select(row_failures(rules)).row(0, named=True))
    repeated = frame.height - frame[unique].n_unique()
    if repeated:
        raise ContractError(contract, unique, "unique", f"{repeated} repeated")
    return frame


def raise_rule_failures(contract: str, failures: Mapping[str, int]) -> None:
    """``ContractError`` for the first rule with failing rows, ``failures`` being ``row_failures``' counts."""
    for name, failing in failures.items():
        if failing:
            raise ContractError(contract, *failed_rule(name), f"{failing} failing")


def _check_columns(found: pl.Schema, contract: str, schema: pl.Schema) -> None:
    """Refuse a missing, extra or mistyped column, or the columns out of ``schema``'s order."""
    for name, dtype in schema.items():
        if name not in found:
            raise ContractError(contract, name, "present")
        if found[name] != dtype:
            raise ContractError(contract, name, f"dtype {dtype}", f"got {found[name]}")
    extra = [name for name in found if name not in schema]
    if extra:
        raise ContractError(contract, extra[0], "in_contract")
    if found.names() != schema.names():
        raise ContractError(contract, None, "column_order", f"expected {schema.names()}, got {found.names()}")


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
