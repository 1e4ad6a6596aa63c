"""Appending a file of rows to a table a spec declares (`python -m backend.ml ingest`).

The whole file is read and checked before anything is written, then appended in one
transaction: a file is taken whole or not at all. It is refused, naming the line (CSV;
the header is line 1) or row (Parquet; the first is row 1) and the column, when:
  - it holds no rows;
  - a declared column is missing, or it has a column the table does not declare;
  - a value is not of its column's type (float, integer, text, ISO 8601 datetime), or
    the time or a key column is empty (other columns may be empty: NULL, a label not
    known yet);
  - its rows are not in time order: each row's time must be at or after the row before
    (the file is not sorted for you: an unsorted file is more often the wrong file), and
    the first at or after the newest time already in the table (rows arrive in time
    order; the check relies on it: fresh rows are those newer than a model's window);
  - two rows share a key, in the file or with a row already in the table.

Only declared tables (`specs.TableDecl`) take files: the generated plant's are written by
`init-db` and `simulate`. A table missing from the database is created (in the same
transaction). Datetimes with a UTC offset are stored as UTC without it, as the generated
tables hold naive times. Parquet needs pyarrow, which is not a dependency: without it a
Parquet file is refused with a message saying so.
"""

from __future__ import annotations

import csv
import importlib.util
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from backend.ml.data import loading, schema
from backend.ml.data.schema import DataError

PARQUET_SUFFIXES = (".parquet", ".pq")


class IngestError(DataError):
    """A file that cannot be appended to its table; nothing was written."""


@dataclass(frozen=True)
class IngestResult:
    table: str
    rows: int
    first: datetime
    last: datetime
    created: bool  # the table did not exist in the database before


def parquet_available() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def _missing(value: Any) -> bool:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return True
    return isinstance(value, float) and math.isnan(value) or value is pd.NaT


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    number = float(value.strip() if isinstance(value, str) else value)
    if not math.isfinite(number):
        raise ValueError
    return number


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, str):
        return int(value.strip())
    number = float(value)
    if not number.is_integer():
        raise ValueError
    return int(number)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError
    return value


def _datetime(value: Any) -> datetime:
    stamp = pd.Timestamp(value.strip() if isinstance(value, str) else value)
    if stamp is pd.NaT:
        raise ValueError
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    result: datetime = stamp.to_pydatetime()
    return result


PARSERS: dict[type, tuple[Callable[[Any], Any], str]] = {
    sa.Float: (_float, "a number"), sa.Integer: (_integer, "a whole number"),
    sa.String: (_text, "text"), sa.DateTime: (_datetime, "an ISO 8601 date or datetime"),
}


def _parser(column: sa.Column[Any]) -> tuple[Callable[[Any], Any], str]:
    return next(p for t, p in PARSERS.items() if isinstance(column.type, t))


def read_rows(path: Path) -> tuple[list[str], Iterator[tuple[str, list[Any]]]]:
    """The file's header and its rows, each with where it is ("line 7", "row 6")."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        if not parquet_available():
            raise IngestError(f"{path}: reading Parquet needs pyarrow, which is not "
                              "installed (pip install pyarrow); or give a CSV file")
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise IngestError(f"{path}: not a readable Parquet file: {exc}") from None
        frame = frame.astype(object).where(frame.notna(), None)
        return ([str(c) for c in frame.columns],
                ((f"row {i + 1}", list(r)) for i, r in enumerate(frame.itertuples(
                    index=False, name=None))))
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise IngestError(f"cannot read {path}: {exc.strerror or exc}") from None
    reader = csv.reader(handle)
    try:
        header = next(reader, None)
    except (csv.Error, UnicodeDecodeError) as exc:
        handle.close()
        raise IngestError(f"{path} line 1: not a CSV header: {exc}") from None
    if header is None:
        handle.close()
        raise IngestError(f"{path} is empty: no header, no rows")

    def rows() -> Iterator[tuple[str, list[Any]]]:
        with handle:
            try:
                for row in reader:
                    if row:  # a blank line holds no row
                        yield f"line {reader.line_num}", list(row)
            except (csv.Error, UnicodeDecodeError) as exc:
                raise IngestError(f"{path} line {reader.line_num}: not valid CSV: {exc}") \
                    from None

    return [h.strip() for h in header], rows()


def validate(table: sa.Table, path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every row of the file, typed, in file order, and where each is ("line 7"); the
    first problem raises IngestError."""
    header, rows = read_rows(path)
    declared = [c.name for c in table.columns]
    missing = [c for c in declared if c not in header]
    extra = [c for c in header if c not in declared]
    doubled = sorted({c for c in header if header.count(c) > 1})
    if missing or extra or doubled:
        problems = ([f"missing column(s) {', '.join(missing)}"] if missing else []) + \
                   ([f"column(s) {', '.join(extra)} not in the table"] if extra else []) + \
                   ([f"column(s) {', '.join(doubled)} given twice"] if doubled else [])
        raise IngestError(f"{path} line 1 (header): {'; '.join(problems)}; table "
                          f"{table.name!r} has columns {', '.join(declared)}")
    tcol = schema.time_column(table.name)
    required = {tcol, *schema.key_columns(table.name)}
    parsers = {c.name: _parser(c) for c in table.columns}
    records: list[dict[str, Any]] = []
    wheres: list[str] = []
    previous: datetime | None = None
    seen: dict[tuple[Any, ...], str] = {}
    keys = schema.key_columns(table.name)
    for where, values in rows:
        if len(values) != len(header):
            raise IngestError(f"{path} {where}: {len(values)} values; the header has "
                              f"{len(header)} columns")
        record: dict[str, Any] = {}
        for name, value in zip(header, values, strict=True):
            if _missing(value):
                if name in required:
                    raise IngestError(f"{path} {where}, column {name}: empty; the "
                                      f"{'time' if name == tcol else 'key'} column needs "
                                      "a value")
                record[name] = None
                continue
            parse, kind = parsers[name]
            try:
                record[name] = parse(value)
            except (TypeError, ValueError, OverflowError):
                raise IngestError(f"{path} {where}, column {name}: {value!r} is not "
                                  f"{kind}") from None
        when = record[tcol]
        if previous is not None and when < previous:
            raise IngestError(f"{path} {where}, column {tcol}: {when} is before the row "
                              f"above ({previous}); rows must be in time order")
        previous = when
        key = tuple(record[k] for k in keys)
        if key in seen:
            raise IngestError(f"{path} {where}, column(s) {', '.join(keys)}: {_key(key)} "
                              f"repeats {seen[key]}")
        seen[key] = where
        records.append(record)
        wheres.append(where)
    if not records:
        raise IngestError(f"{path} holds no rows")
    return records, wheres


def _key(key: tuple[Any, ...]) -> str:
    return ", ".join(str(k) for k in key)


def _check_against_table(conn: sa.Connection, table: sa.Table, path: Path,
                         records: list[dict[str, Any]], wheres: list[str]) -> None:
    """Refuse rows older than the newest on file, and keys the table already holds."""
    tcol = schema.time_column(table.name)
    newest = conn.execute(sa.select(sa.func.max(table.c[tcol]))).scalar()
    if newest is None:
        return
    newest = pd.Timestamp(newest).to_pydatetime()
    first = records[0][tcol]
    if first < newest:
        raise IngestError(f"{path} {wheres[0]}, column {tcol}: {first} is older than the "
                          f"newest row already in {table.name!r} ({newest}); only newer "
                          "rows can be appended")
    keys = schema.key_columns(table.name)
    # Every new row is at or after `newest`, so only rows at `newest` can share a key.
    held = {tuple(r) for r in conn.execute(
        sa.select(*(table.c[k] for k in keys)).where(table.c[tcol] == newest))}
    for record, where in zip(records, wheres, strict=True):
        if record[tcol] > newest:
            break
        key = tuple(record[k] for k in keys)
        if key in held:
            raise IngestError(f"{path} {where}, column(s) {', '.join(keys)}: {_key(key)} "
                              f"is already in {table.name!r}")


def ingest(engine: Engine, table_name: str, path: Path) -> IngestResult:
    """Validate the whole file, then append it to the table in one transaction."""
    table = schema.get_table(table_name)
    if table_name in schema.GENERATED:
        declared = sorted(set(schema.TABLES) - set(schema.GENERATED))
        raise IngestError(f"{table_name!r} is generated (init-db, simulate), not ingested; "
                          "ingest fills a table a model declares"
                          + (f": {', '.join(declared)}" if declared else
                             " (none is declared; see EXAMPLE_MODELS)"))
    path = Path(path)
    records, wheres = validate(table, path)
    tcol = schema.time_column(table_name)
    try:
        with engine.begin() as conn:
            created = not sa.inspect(conn).has_table(table_name)
            if created:
                table.create(conn)
            else:
                _check_against_table(conn, table, path, records, wheres)
            for i in range(0, len(records), 50_000):
                conn.execute(table.insert(), records[i:i + 50_000])
    except SQLAlchemyError as exc:
        raise DataError(f"cannot append to {table_name!r} in "
                        f"{loading.describe_url(engine.url.render_as_string())}: "
                        f"{str(getattr(exc, 'orig', None) or exc).strip()}; nothing was "
                        "written") from exc
    return IngestResult(table_name, len(records), records[0][tcol], records[-1][tcol], created)
