"""Frames checked against their contracts where they enter a stage: the one place pandera runs, and the
checks of the same contracts as plain polars predicates (``contracts.rules``) where pandera's import
would cost more than the work.

pandera checks only the schema of a LazyFrame, and its ``PANDERA_*`` environment variables can turn
checks off or down; here every check runs, schema and data, on an eager frame, whatever they say.
A frame that fails raises ``ContractError`` naming the contract, the column and the check; pandera's
own errors never leave this module. pandera (and with it pandas) is imported at the first check, so a
streamed stage that never checks an eager frame never loads it, and ``rules_checked`` checks a
contract written as plain polars rules (``contracts.rules``) with the error pandera's model would give,
without importing pandera at all (loading a bundle's search index; ``rejected_checked``: the rejected
rows of ``fbml predict`` and of the photo loader).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar, cast

import polars as pl
from contracts.rules import REJECTED_SCHEMA, RowRule, failed_rule, rejected_rules

from fbml.errors import ContractError, shown

if TYPE_CHECKING:
    import pandera.errors
    import pandera.polars as pa
    from contracts import Rejected
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


def rules_checked(
    frame: object, contract: str, schema: pl.Schema, rules: tuple[RowRule, ...], *, nullable: tuple[str, ...] = (),
    unique: str | None = None,
) -> pl.DataFrame:
    """``frame`` checked against a contract written as polars rules, without pandera (whose import would cost
    more than the check): exactly ``schema``'s columns in its order, none null but the ``nullable`` ones (NaN
    counts as null), each of its dtype, every rule holding, no value of ``unique`` twice.

    ``ContractError`` at the first check it fails, the one ``validated`` raises for the pandera model of the
    same contract: a column it does not know or one out of order, then a missing column, then column by
    column its nulls, its dtype, its rules, its uniqueness.
    """
    if not isinstance(frame, pl.DataFrame):
        raise ContractError(contract, None, "is_polars_dataframe", f"got {type(frame).__name__}")
    _check_columns(frame, contract, schema)
    for column, dtype in schema.items():
        values = pl.col(column)
        if column not in nullable:
            missing = values.is_null() | values.is_nan() if frame.schema[column].is_float() else values.is_null()
            _check_rows(frame, contract, column, "not_null", ~missing)
        if frame.schema[column] != dtype:
            raise ContractError(contract, column, f"dtype {dtype}", f"got {frame.schema[column]}")
        for rule in rules:
            if rule.column == column:
                _check_rows(frame, contract, column, rule.check, rule.holds.fill_null(True))
        if column == unique:
            _check_rows(frame, contract, column, "unique", values.is_null() | ~values.is_duplicated())
    return frame


def rejected_checked(frame: object) -> DataFrame[Rejected]:
    """``frame`` checked against ``Rejected`` by its rules, as ``validated(frame, Rejected)`` checks it (the same
    failures, the same ``ContractError``) without importing pandera: for stages that make rejected rows but
    check nothing else with pandera (``fbml predict``, the photo loader)."""
    once = RowRule("source_row", "rejected_once", ~pl.struct("source", "stage", "source_row").is_duplicated())
    return cast("DataFrame[Rejected]", rules_checked(frame, "Rejected", REJECTED_SCHEMA, (*rejected_rules(), once)))


def raise_rule_failures(contract: str, failures: Mapping[str, int]) -> None:
    """``ContractError`` for the first rule with failing rows, ``failures`` being ``contracts.rules.row_failures``' counts."""
    for name, failing in failures.items():
        if failing:
            raise ContractError(contract, *failed_rule(name), f"{failing} failing")


def _check_columns(frame: pl.DataFrame, contract: str, schema: pl.Schema) -> None:
    """Every column known and in ``schema``'s order, then every column present."""
    expected = iter([name for name in schema if name in frame.columns])
    for name in frame.columns:
        if name not in schema:
            raise ContractError(contract, name, "in_contract")
        if name != next(expected):
            raise ContractError(contract, None, "column_order", shown(f"column '{name}' out-of-order"))
    for name in schema:
        if name not in frame.columns:
            raise ContractError(contract, name, "present")


def _check_rows(frame: pl.DataFrame, contract: str, column: str, check: str, holds: pl.Expr) -> None:
    failing = frame.filter(~holds).select(column)
    if failing.height:
        raise ContractError(contract, column, check, _examples(failing))


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
