"""Python models, run in-process (dbt-duckdb's pattern) on the model's own dbt connection.

The compiled code dbt hands us is the user's ``def model(dbt, session)``, dbt's ``dbtObj`` postfix
(refs/sources/config/this) and a two-line trailer from ``pg_llm__py_write_table`` naming the target
relation. We import it as a module, call ``model(dbtObj(load_df), session)`` and write the returned
DataFrame to the target with ``CREATE TABLE`` (types from the DataFrame's dtypes) + ``COPY``, inside
dbt's transaction, so the materialization's rename/merge sees it and a failure leaves nothing behind.

``session.sql(query)`` -> pandas.DataFrame; ``session.llm`` -> LlmFrameSession (complete / classify /
extract over a pandas Series; paid answers are written on a separate autocommit connection).
"""
from __future__ import annotations

import datetime as dt
import decimal
import importlib.util
import io
import json
import math
import os
import sys
import tempfile
import traceback
from typing import Any, Callable, List, Tuple

from dbt.adapters.events.logging import AdapterLogger
from dbt_common.exceptions import DbtRuntimeError

from dbt.adapters.pg_llm.fill_op import report_budget

logger = AdapterLogger("pg_llm")

COPY_CHUNK_ROWS = 100_000
NULL = "\\N"


def _pandas():
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - depends on the environment
        raise DbtRuntimeError(
            "pg_llm: Python models need pandas; install it with `pip install 'dbt-pg-llm[python-models]'`"
        ) from None
    return pd


class Session:
    """The `session` argument of a Python model."""

    def __init__(self, adapter, handle, parsed_model: dict):
        self._adapter = adapter
        self._handle = handle
        self._model = parsed_model
        self._llm = None

    def sql(self, query: str):
        """Run a query on the model's connection and return a pandas DataFrame."""
        return read_frame(self._handle, query)

    def table(self, relation: str):
        return self.sql(f"select * from {relation}")

    def execute(self, statement: str) -> None:
        with self._handle.cursor() as cur:
            cur.execute(statement)

    @property
    def llm(self):
        if self._llm is None:
            self._llm = self._adapter.llm_frame_session(self._model.get("unique_id"))
        return self._llm

    def log_reports(self) -> None:
        """One dbt log line per LLM column the model filled (like llm_enrich's)."""
        if self._llm is None:
            return
        from dbt_pg_llm.errors import redact

        for report in getattr(self._llm, "reports", ()):
            logger.info(f"{self._model.get('unique_id')}: {redact(report.summary())}")
            if report.errors:
                first = report.first_error
                logger.warning(
                    f"{self._model.get('unique_id')}: {report.errors} key(s) failed; those values are None "
                    f"and retried on the next run. First error: "
                    f"{redact(f'{first.kind}: {first.message}') if first else '?'}"
                )
            report_budget(self._adapter.llm_settings(), self._model.get("unique_id"), report)

    def __repr__(self) -> str:
        return f"<pg_llm session for {self._model.get('unique_id')}>"


def read_frame(handle, query: str):
    pd = _pandas()
    with handle.cursor() as cur:
        cur.execute(query)
        columns = [d.name for d in cur.description] if cur.description else []
        rows = cur.fetchall() if cur.description else []
    return pd.DataFrame.from_records(rows, columns=columns)


def run_python_model(adapter, handle, parsed_model: dict, compiled_code: str) -> int:
    """Execute a compiled Python model and write its DataFrame to the target. Returns the row count."""
    identifier = parsed_model.get("alias") or parsed_model.get("name") or "python_model"
    fd, path = tempfile.mkstemp(prefix=f"pg_llm_{identifier}_", suffix=".py")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(compiled_code.lstrip())
    module_name = f"pg_llm_python_model_{identifier}"
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise DbtRuntimeError(f"pg_llm: cannot load Python model {identifier}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        target = getattr(module, "__pg_llm_target__", None)
        temporary = bool(getattr(module, "__pg_llm_temporary__", False))
        if not target:
            raise DbtRuntimeError("pg_llm: the compiled Python model has no target relation "
                                  "(was it materialized by pg_llm's table/incremental materialization?)")
        session = adapter.python_session(handle, parsed_model)
        dbt_obj = module.dbtObj(lambda relation: read_frame(handle, f"select * from {relation}"))
        result = module.model(dbt_obj, session)
        session.log_reports()
        frame = to_pandas(result, identifier)
        rows = write_frame(handle, frame, target, temporary=temporary)
        logger.debug(f"pg_llm: Python model {identifier} wrote {rows} rows to {target}")
        return rows
    except DbtRuntimeError:
        raise
    except Exception as err:
        from dbt_pg_llm.errors import redact

        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        raise DbtRuntimeError(f"Python model {identifier} failed:\n{redact(text)}") from None
    finally:
        sys.modules.pop(module_name, None)
        try:
            os.unlink(path)
        except OSError:
            pass


def to_pandas(result: Any, identifier: str = "model"):
    pd = _pandas()
    if isinstance(result, pd.DataFrame):
        return result
    if isinstance(result, pd.Series):
        return result.to_frame()
    for converter in ("to_pandas", "toPandas", "df"):
        fn = getattr(result, converter, None)
        if callable(fn):
            converted = fn()
            if isinstance(converted, pd.DataFrame):
                return converted
    raise DbtRuntimeError(
        f"pg_llm: Python model {identifier} must return a pandas DataFrame, got {type(result).__name__}"
    )


# -- DataFrame -> Postgres ---------------------------------------------------------------------------

def quote_ident(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def _escape_text(value: str) -> str:
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def _fmt_float(v) -> str:
    f = float(v)
    if math.isinf(f):
        return "Infinity" if f > 0 else "-Infinity"
    return repr(f)


def _fmt_bool(v) -> str:
    return "t" if bool(v) else "f"


def _fmt_int(v) -> str:
    return str(int(v))


def _fmt_json(v) -> str:
    return _escape_text(json.dumps(_jsonable(v), ensure_ascii=False, default=str))


def _jsonable(v):
    # numpy scalars / arrays inside dicts and lists
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _fmt_timestamp(v) -> str:
    return v.isoformat() if hasattr(v, "isoformat") else str(v)


def _fmt_interval(v) -> str:
    return f"{v.total_seconds()} seconds"


def _fmt_bytes(v) -> str:
    return "\\\\x" + bytes(v).hex()


def _fmt_text(v) -> str:
    return _escape_text(v if isinstance(v, str) else str(v))


def _infer_object(values: List[Any]) -> Tuple[str, Callable[[Any], str]]:
    if not values:
        return "text", _fmt_text
    kinds = set()
    for v in values[:10_000]:
        if isinstance(v, bool):
            kinds.add("bool")
        elif isinstance(v, int):
            kinds.add("int")
        elif isinstance(v, float):
            kinds.add("float")
        elif isinstance(v, decimal.Decimal):
            kinds.add("decimal")
        elif isinstance(v, str):
            kinds.add("str")
        elif isinstance(v, dt.datetime):
            kinds.add("tstz" if v.tzinfo is not None else "ts")
        elif isinstance(v, dt.date):
            kinds.add("date")
        elif isinstance(v, dt.timedelta):
            kinds.add("interval")
        elif isinstance(v, (dict, list, tuple)) or (hasattr(v, "tolist") and hasattr(v, "ndim") and v.ndim > 0):
            kinds.add("json")
        elif isinstance(v, (bytes, bytearray, memoryview)):
            kinds.add("bytes")
        else:
            kinds.add("other")
    if kinds == {"bool"}:
        return "boolean", _fmt_bool
    if kinds == {"int"}:
        return "bigint", _fmt_int
    if kinds <= {"int", "float"}:
        return "double precision", _fmt_float
    if kinds <= {"int", "decimal"}:
        return "numeric", str
    if kinds == {"ts"}:
        return "timestamp", _fmt_timestamp
    if kinds == {"tstz"}:
        return "timestamptz", _fmt_timestamp
    if kinds == {"date"}:
        return "date", _fmt_timestamp
    if kinds == {"interval"}:
        return "interval", _fmt_interval
    if kinds == {"json"}:
        return "jsonb", _fmt_json
    if kinds == {"bytes"}:
        return "bytea", _fmt_bytes
    return "text", _fmt_text


def column_type(series) -> Tuple[str, Callable[[Any], str]]:
    """The Postgres type of a pandas column and the formatter of its non-null values for COPY."""
    pd = _pandas()
    from pandas.api import types as t

    dtype = series.dtype
    if t.is_bool_dtype(dtype):
        return "boolean", _fmt_bool
    if t.is_integer_dtype(dtype):
        if str(dtype).lower() in ("uint64",):
            return "numeric", _fmt_int
        return "bigint", _fmt_int
    if t.is_float_dtype(dtype):
        return "double precision", _fmt_float
    if isinstance(dtype, pd.DatetimeTZDtype):
        return "timestamptz", _fmt_timestamp
    if t.is_datetime64_any_dtype(dtype):
        return "timestamp", _fmt_timestamp
    if t.is_timedelta64_dtype(dtype):
        return "interval", _fmt_interval
    if isinstance(dtype, pd.CategoricalDtype):
        return _infer_object(series.dropna().astype(object).tolist())
    if t.is_string_dtype(dtype) and not t.is_object_dtype(dtype):
        return "text", _fmt_text
    return _infer_object(series[~_null_mask(series)].tolist())


def _null_mask(series):
    pd = _pandas()
    try:
        return series.isna().to_numpy(dtype=bool)
    except (TypeError, ValueError):
        return pd.Series([v is None for v in series], index=series.index).to_numpy(dtype=bool)


def frame_columns(frame) -> List[Tuple[str, str, Callable[[Any], str]]]:
    names = [str(c) for c in frame.columns]
    if not names:
        raise DbtRuntimeError("pg_llm: the Python model returned a DataFrame without columns")
    seen = set()
    for n in names:
        if n in seen:
            raise DbtRuntimeError(f"pg_llm: the Python model returned two columns named {n!r}")
        seen.add(n)
    out = []
    for i, name in enumerate(names):
        pg_type, fmt = column_type(frame.iloc[:, i])
        out.append((name, pg_type, fmt))
    return out


def frame_to_copy_text(frame, columns) -> str:
    """COPY text format for the rows of `frame` (tab separated, \\N for NULL, backslash escapes)."""
    pd = _pandas()
    if len(frame) == 0:
        return ""
    rendered = []
    for i, (_, _, fmt) in enumerate(columns):
        series = frame.iloc[:, i]
        mask = _null_mask(series)
        values = series.astype(object).tolist()
        rendered.append(pd.Series([NULL if m else fmt(v) for v, m in zip(values, mask)], dtype=object))
    first = rendered[0]
    lines = first.str.cat(rendered[1:], sep="\t") if len(rendered) > 1 else first
    return "\n".join(lines.tolist()) + "\n"


def write_frame(handle, frame, relation: str, *, temporary: bool = False) -> int:
    """CREATE TABLE `relation` from the frame's dtypes and COPY its rows in. Returns the row count."""
    columns = frame_columns(frame)
    ddl = ", ".join(f"{quote_ident(name)} {pg_type}" for name, pg_type, _ in columns)
    column_list = ", ".join(quote_ident(name) for name, _, _ in columns)
    with handle.cursor() as cur:
        cur.execute(f"create {'temporary ' if temporary else ''}table {relation} ({ddl})")
        for start in range(0, len(frame), COPY_CHUNK_ROWS):
            chunk = frame.iloc[start:start + COPY_CHUNK_ROWS]
            cur.copy_expert(f"copy {relation} ({column_list}) from stdin", io.StringIO(frame_to_copy_text(chunk, columns)))
    return int(len(frame))
