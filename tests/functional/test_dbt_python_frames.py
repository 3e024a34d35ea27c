"""DataFrame -> Postgres for Python models (CREATE TABLE from dtypes + COPY) and back, on a real server."""
from __future__ import annotations

import datetime as dt
import decimal

import pytest

pd = pytest.importorskip("pandas")

from dbt.adapters.pg_llm.python_model import read_frame, write_frame  # noqa: E402


def _types(conn, table: str) -> dict:
    with conn.cursor() as cur:
        cur.execute("select column_name, data_type from information_schema.columns "
                    "where table_schema = %s and table_name = %s order by ordinal_position", (conn.schema, table))
        return dict(cur.fetchall())


def test_dtypes_become_postgres_types_and_awkward_values_round_trip(pg_conn):
    awkward = ["tab\there", "new\nline", "back\\slash\\N", None, "", "quote'\"", "crlf\r\n", "ünïcødé ✓"]
    n = len(awkward)
    frame = pd.DataFrame({
        "id": range(n),
        "nullable_int": pd.array([None if i % 3 == 0 else i for i in range(n)], dtype="Int64"),
        "ratio": [i / 3 for i in range(n)],
        "flag": [i % 2 == 0 for i in range(n)],
        "text": awkward,
        "label": pd.Categorical(["a", "b"] * (n // 2)),
        "ts": pd.date_range("2024-01-01", periods=n, freq="h"),
        "tstz": pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC"),
        "day": [dt.date(2024, 1, 1 + i) for i in range(n)],
        "amount": [decimal.Decimal("1.10") * i for i in range(n)],
        "facts": [{"issues": ["x\ty", "z"], "ok": i % 2 == 0} if i != 2 else None for i in range(n)],
        "tags": [["a", "b\\c"]] * n,
    })
    rows = write_frame(pg_conn, frame, "frame_rt")
    assert rows == n
    assert _types(pg_conn, "frame_rt") == {
        "id": "bigint", "nullable_int": "bigint", "ratio": "double precision", "flag": "boolean",
        "text": "text", "label": "text", "ts": "timestamp without time zone",
        "tstz": "timestamp with time zone", "day": "date", "amount": "numeric", "facts": "jsonb", "tags": "jsonb",
    }
    back = read_frame(pg_conn, "select * from frame_rt order by id")
    # NULL reads back as pandas' missing value (None or NaN, depending on the pandas version)
    assert [None if pd.isna(v) else v for v in back["text"]] == awkward
    assert [None if pd.isna(v) else int(v) for v in back["nullable_int"]][:3] == [None, 1, 2]
    assert back["facts"][0] == {"issues": ["x\ty", "z"], "ok": True} and back["facts"][2] is None
    assert back["tags"][0] == ["a", "b\\c"]
    assert back["flag"].tolist() == [i % 2 == 0 for i in range(n)]
    assert [float(x) for x in back["amount"]] == [float(decimal.Decimal("1.10") * i) for i in range(n)]


def test_empty_frame_creates_the_table_and_nan_is_null(pg_conn):
    write_frame(pg_conn, pd.DataFrame({"a": pd.Series([], dtype="float64"), "b": pd.Series([], dtype="object")}),
                "frame_empty")
    assert _types(pg_conn, "frame_empty") == {"a": "double precision", "b": "text"}
    write_frame(pg_conn, pd.DataFrame({"x": [1.5, float("nan"), float("inf")]}), "frame_nan")
    with pg_conn.cursor() as cur:
        cur.execute("select count(*) filter (where x is null), max(x) from frame_nan")
        assert cur.fetchone() == (1, float("inf"))
