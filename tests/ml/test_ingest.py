"""`ingest`: a file is appended whole to a declared table, or refused naming where it is bad."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from backend.ml.data import ingest, loading, schema, synthetic
from backend.ml.fleet.specs import ColumnDecl, TableDecl

GAUGES = TableDecl(
    "gauge_readings", time="read_at", keys=("site", "read_at"),
    columns=(ColumnDecl("site", "text", "id"), ColumnDecl("pumps", "integer", "context"),
             ColumnDecl("level_m", "float", "outcome")))
TABLE = schema.register_table(GAUGES)
HEADER = "read_at,site,pumps,level_m\n"
GOOD = HEADER + ("2026-01-01T00:00:00,north,2,1.5\n"
                 "2026-01-01T00:00:00,south,3,2.25\n"
                 "2026-01-02,north,2,\n")  # a level not known yet: NULL
LATER = HEADER + "2026-01-02,south,1,2.0\n2026-01-03 06:00,north,2,1.75\n"


def write(tmp_path: Path, text: str, name: str = "rows.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def count(url: str) -> int:
    engine = loading.readonly_engine(url)
    if not sa.inspect(engine).has_table(TABLE.name):
        return 0
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(TABLE)).scalar_one())


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'plant.db'}"


def test_a_good_file_creates_the_table_and_a_later_one_appends(sqlite_url: str,
                                                               tmp_path: Path) -> None:
    engine = loading.writable_engine(sqlite_url)
    done = ingest.ingest(engine, "gauge_readings", write(tmp_path, GOOD))
    assert (done.rows, done.created, str(done.first), str(done.last)) == (
        3, True, "2026-01-01 00:00:00", "2026-01-02 00:00:00")
    again = ingest.ingest(engine, "gauge_readings", write(tmp_path, LATER, "later.csv"))
    assert (again.rows, again.created, count(sqlite_url)) == (2, False, 5)
    frame = loading.load_table(loading.readonly_engine(sqlite_url), "gauge_readings")
    assert list(frame.site) == ["north", "south", "north", "south", "north"]
    assert frame.level_m.isna().sum() == 1 and frame.pumps.dtype.kind == "i"


BAD_FILES = {
    "missing column": (HEADER.replace(",pumps", "") + "2026-02-01,north,1.0\n",
                       "line 1 (header): missing column(s) pumps"),
    "extra column": (HEADER.strip() + ",colour\n2026-02-01,north,2,1.0,red\n",
                     "line 1 (header): column(s) colour not in the table"),
    "not a number": (HEADER + "2026-02-01,north,2,1.0\n2026-02-02,north,2,high\n",
                     "line 3, column level_m: 'high' is not a number"),
    "not a whole number": (HEADER + "2026-02-01,north,2.5,1.0\n",
                           "line 2, column pumps: '2.5' is not a whole number"),
    "not a date": (HEADER + "2026-02-01,north,2,1.0\n31/02/2026,north,2,1.0\n",
                   "line 3, column read_at: '31/02/2026' is not an ISO 8601"),
    "empty key": (HEADER + "2026-02-01,,2,1.0\n", "line 2, column site: empty"),
    "short row": (HEADER + "2026-02-01,north,2\n", "line 2: 3 values; the header has 4"),
    "unsorted": (HEADER + "2026-02-02,north,2,1.0\n2026-02-01,south,2,1.0\n",
                 "line 3, column read_at: 2026-02-01 00:00:00 is before the row above"),
    "duplicate key in the file": (
        HEADER + "2026-02-01,north,2,1.0\n2026-02-01,north,3,1.1\n",
        "line 3, column(s) site, read_at: north, 2026-02-01 00:00:00 repeats line 2"),
    "older than the table": (HEADER + "2026-01-01T12:00,west,2,1.0\n",
                             "line 2, column read_at: 2026-01-01 12:00:00 is older than the "
                             "newest row already in 'gauge_readings' (2026-01-02 00:00:00)"),
    "key already in the table": (HEADER + "2026-01-02,north,2,1.0\n",
                                 "line 2, column(s) site, read_at: north, 2026-01-02 00:00:00 "
                                 "is already in 'gauge_readings'"),
    "header only": (HEADER, "holds no rows"),
    "empty file": ("", "is empty: no header, no rows"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_is_refused_naming_line_and_column_and_writes_nothing(
        case: str, sqlite_url: str, tmp_path: Path) -> None:
    engine = loading.writable_engine(sqlite_url)
    ingest.ingest(engine, "gauge_readings", write(tmp_path, GOOD, "good.csv"))
    text, message = BAD_FILES[case]
    path = write(tmp_path, text)
    with pytest.raises(ingest.IngestError) as err:
        ingest.ingest(engine, "gauge_readings", path)
    assert str(err.value).startswith(str(path)) and message in str(err.value), err.value
    assert count(sqlite_url) == 3


def test_a_bad_first_file_creates_no_table(sqlite_url: str, tmp_path: Path) -> None:
    engine = loading.writable_engine(sqlite_url)
    with pytest.raises(ingest.IngestError, match="line 3, column level_m"):
        ingest.ingest(engine, "gauge_readings", write(
            tmp_path, HEADER + "2026-02-01,north,2,1.0\n2026-02-02,north,2,x\n"))
    assert not sa.inspect(engine).has_table("gauge_readings")


def test_generated_and_unknown_tables_take_no_file(sqlite_url: str, tmp_path: Path) -> None:
    engine = loading.writable_engine(sqlite_url)
    with pytest.raises(ingest.IngestError, match="'shipments' is generated"):
        ingest.ingest(engine, "shipments", write(tmp_path, GOOD))
    with pytest.raises(schema.DataError, match="unknown table 'nope'"):
        ingest.ingest(engine, "nope", write(tmp_path, GOOD))


@pytest.mark.skipif(ingest.parquet_available(), reason="pyarrow is installed")
def test_parquet_without_pyarrow_says_so(sqlite_url: str, tmp_path: Path) -> None:
    with pytest.raises(ingest.IngestError, match="needs pyarrow, which is not installed"):
        ingest.ingest(loading.writable_engine(sqlite_url), "gauge_readings",
                      write(tmp_path, "PAR1", "rows.parquet"))


def test_init_db_force_leaves_a_declared_table_alone(sqlite_url: str, tmp_path: Path) -> None:
    engine = loading.writable_engine(sqlite_url)
    ingest.ingest(engine, "gauge_readings", write(tmp_path, GOOD))
    assert not synthetic.database_has_data(engine)  # a declared table is not the plant's
    synthetic.init_db(engine, days=2, end=date(2026, 1, 31), shipments_per_day=5)
    synthetic.init_db(engine, days=2, end=date(2026, 2, 28), shipments_per_day=5, force=True)
    assert count(sqlite_url) == 3
    newest = loading.newest_time(engine, "shipments")
    assert newest is not None and newest.month == 2


def test_the_command_appends_or_exits_2_with_one_line(sqlite_url: str, tmp_path: Path) -> None:
    """Through `python -m backend.ml` with the example enabled, as an operator runs it."""
    env = {**os.environ, "DATABASE_URL": sqlite_url, "EXAMPLE_MODELS": "co2_weekly"}
    good = write(tmp_path, "week_ending,co2_ppm\n1958-03-29,316.1\n1958-04-05,317.3\n")
    bad = write(tmp_path, "week_ending,co2_ppm\n1958-04-12,317.6\n1958-04-19,n/a\n", "b.csv")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "backend.ml", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    ok = cli("ingest", "co2_weekly", str(good))
    assert ok.returncode == 0 and "appended 2 row(s) to co2_weekly (table created)" in ok.stdout
    refused = cli("ingest", "co2_weekly", str(bad))
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr == (f"error: {bad} line 3, column co2_ppm: 'n/a' is not a "
                              "number\n")
    with loading.readonly_engine(sqlite_url).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM co2_weekly")).scalar_one() == 2


def test_postgres_appends_a_good_file_and_refuses_a_bad_one(postgres_url: str,
                                                             tmp_path: Path) -> None:
    engine = loading.writable_engine(postgres_url)
    with engine.begin() as conn:
        TABLE.drop(conn, checkfirst=True)
    try:
        assert ingest.ingest(engine, "gauge_readings", write(tmp_path, GOOD)).rows == 3
        for case in ("key already in the table", "not a number", "older than the table"):
            text, message = BAD_FILES[case]
            with pytest.raises(ingest.IngestError) as err:
                ingest.ingest(engine, "gauge_readings", write(tmp_path, text, "bad.csv"))
            assert message in str(err.value), err.value
        assert count(postgres_url) == 3
        assert ingest.ingest(engine, "gauge_readings",
                             write(tmp_path, LATER, "later.csv")).rows == 2
        assert count(postgres_url) == 5
    finally:
        with engine.begin() as conn:
            TABLE.drop(conn, checkfirst=True)
        engine.dispose()
