"""Embedding vectors on the wire and in Postgres: base64 float32 (OpenAI's ``encoding_format:
base64``, also the journal's form) and a binary COPY into ``<schema>.llm_embeddings``.

Binary, not text: no float is formatted or parsed (psycopg2's list adaptation cost ~1 s per
2,048 x 256 floats, a text COPY ~0.6 s). ``store_vectors`` COPYs straight into the table; when a key
is already there (another writer got in first) it goes through a staging table instead.

``llm_embeddings.vec`` is pgvector's ``vector`` where the extension was installed when the audit
schema was migrated, else ``real[]`` (migration 20, decision 0040); ``vector_storage`` says which,
and the stream is built for it: a vector's binary form is its dimension and its floats (Postgres
copies them in one go), a real[]'s wraps each float with its length (Postgres calls a function
per float: ~2.3x the COPY's CPU). A vector holding NaN or infinity is never stored (pgvector
refuses them, and no similarity could use them): ``copy_data`` leaves its row out and names it.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import struct
import sys
from array import array
from typing import Iterable

from .migrations import quote_ident

__all__ = ["EMBEDDINGS_TABLE", "NONFINITE", "NONFINITE_MESSAGE", "vector_to_b64", "vector_from_b64", "parse_embeddings",
           "fetch_vectors", "stored_keys", "present_keys", "vector_storage", "store_vectors", "copy_data", "store_copy",
           "bound_malloc_arenas"]

EMBEDDINGS_TABLE = "llm_embeddings"
_SQL_CHUNK = 10_000  # keys per lookup statement
NONFINITE_MESSAGE = "the provider's vector holds NaN or infinity; not stored (the row gets NULL)"
NONFINITE = f"invalid_output: {NONFINITE_MESSAGE}"  # a failed row's report entry: "<error kind>: <message>"


def vector_to_b64(vec) -> str:
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()


def vector_from_b64(data: str) -> list[float]:
    raw = base64.b64decode(data)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def parse_embeddings(raw: bytes, expected: int) -> dict:
    """An OpenAI ``/embeddings`` answer's body -> {"vectors": base64 float32 per input in input order,
    "usage": its usage}; ModelError (api) when it holds another number of vectors than ``expected``.
    Vectors stay base64 (OpenAI's base64 encoding; a float list is converted): decoded once, for COPY."""
    from ..errors import ErrorKind, ModelError

    payload = json.loads(raw)
    data = sorted(payload.get("data") or [], key=lambda d: d.get("index", 0))
    if len(data) != expected:
        raise ModelError(ErrorKind.API, f"embeddings answer has {len(data)} vectors for {expected} inputs")
    vectors = [d["embedding"] if isinstance(d["embedding"], str) else vector_to_b64(d["embedding"]) for d in data]
    return {"vectors": vectors, "usage": payload.get("usage")}


_M_ARENA_MAX = -8  # glibc's mallopt parameter
_arenas_bounded = False


def bound_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for this process (as ``MALLOC_ARENA_MAX=2`` would), once.

    Why: the fill's worker threads each get an arena of their own, and the MBs of responses, vectors
    and COPY streams they free stay in it, unused by the others: 100,000 texts peaked at ~220 MB
    over the fill's start with one arena per thread, ~160 MB with two (the same CPU time). Only
    arenas created later are affected; elsewhere than glibc (macOS, musl) nothing happens."""
    global _arenas_bounded
    if _arenas_bounded or not sys.platform.startswith("linux"):
        return _arenas_bounded
    _arenas_bounded = True
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, int(arenas)))


def fetch_vectors(conn, audit_schema: str, keys: Iterable[str]) -> dict[str, list[float]]:
    """The stored vectors of ``keys`` (absent keys are left out)."""
    keys = list(keys)
    out: dict[str, list[float]] = {}
    with conn.cursor() as cur:
        for i in range(0, len(keys), _SQL_CHUNK):
            cur.execute(f"select key, vec::real[] from {quote_ident(audit_schema)}.{EMBEDDINGS_TABLE} where key = any(%s)",
                        (keys[i:i + _SQL_CHUNK],))
            out.update((k, list(v)) for k, v in cur.fetchall())
    return out


def stored_keys(conn, q: str, keys: list[str]) -> set[str]:
    """The keys of ``keys`` with a vector in ``<q>.llm_embeddings`` (``q``: the quoted audit schema)."""
    found: set[str] = set()
    with conn.cursor() as cur:
        for i in range(0, len(keys), _SQL_CHUNK):
            cur.execute(f"select key from {q}.{EMBEDDINGS_TABLE} where key = any(%s)", (keys[i:i + _SQL_CHUNK],))
            found.update(k for (k,) in cur.fetchall())
    return found


def present_keys(conn, audit_schema: str, keys: list[str]) -> set[str]:
    """The keys of ``keys`` that have a vector in ``<audit_schema>.llm_embeddings``."""
    return stored_keys(conn, quote_ident(audit_schema), keys)


def vector_storage(conn, q: str) -> bool:
    """Whether ``<q>.llm_embeddings.vec`` is pgvector's type (else ``real[]``): the form its COPY takes."""
    with conn.cursor() as cur:
        cur.execute("select a.atttypid <> 'real[]'::regtype from pg_attribute a "
                    "where a.attrelid = to_regclass(%s) and a.attname = 'vec'", (f"{q}.{EMBEDDINGS_TABLE}",))
        row = cur.fetchone()
    return bool(row and row[0])


def store_vectors(conn, q: str, rows: list[tuple[str, str]], model_name: str, tokens_each: int = 0,
                  run_id: str | None = None) -> list[str]:
    """(key, base64 float32 vector) rows into ``<q>.llm_embeddings`` (``q``: the quoted audit schema)
    by binary COPY; a key already there is left as it is. Returns the keys not stored because their
    vector holds NaN or infinity (``NONFINITE``)."""
    if not rows:
        return []
    data, rejected = copy_data(rows, model_name, tokens_each, run_id, vector=vector_storage(conn, q))
    if data is not None:
        store_copy(conn, q, data)
    return rejected


def copy_data(rows: list[tuple[str, str]], model_name: str, tokens_each: int = 0, run_id: str | None = None,
              vector: bool = False) -> tuple[bytes | None, list[str]]:
    """(the binary COPY stream of ``store_vectors``' rows, or None when no row is left; the keys left
    out: their vector holds NaN or infinity). ``vector``: for a pgvector column (``vector_storage``),
    else real[]. Built outside any lock (CPU only), then handed to ``store_copy`` on the connection."""
    raws = [binascii.a2b_base64(row[1]) for row in rows]  # (key, b64) or (key, b64, its own prompt tokens)
    bad = _nonfinite_rows(raws)
    rejected = [rows[i][0] for i in sorted(bad)]
    if bad:
        rows = [row for i, row in enumerate(rows) if i not in bad]
        raws = [raw for i, raw in enumerate(raws) if i not in bad]
    return (_copy_binary(rows, raws, model_name, tokens_each, run_id, vector) if rows else None), rejected


def store_copy(conn, q: str, data: bytes) -> None:
    """COPY ``copy_data``'s stream into ``<q>.llm_embeddings``; a key already there is left as it is."""
    with conn.cursor() as cur:
        if conn.autocommit:  # straight in: our keys are claimed, so a key written meanwhile is rare, and
            try:             # the staging table's second copy cost as much Postgres CPU as the COPY
                cur.copy_expert(f"copy {q}.{EMBEDDINGS_TABLE} (key, model, dims, vec, prompt_tokens, run_id) "
                                "from stdin with (format binary)", io.BytesIO(data))
                return
            except Exception as exc:
                if getattr(exc, "pgcode", None) != "23505":  # unique_violation: that COPY wrote nothing
                    raise
        # the stage takes the table's own column types (vec: vector or real[], as the stream was built)
        cur.execute("drop table if exists pg_temp.__emb_stage")
        cur.execute(f"create temp table __emb_stage as select key, model, dims, vec, prompt_tokens, run_id "
                    f"from {q}.{EMBEDDINGS_TABLE} with no data")
        cur.copy_expert("copy __emb_stage from stdin with (format binary)", io.BytesIO(data))
        cur.execute(f"""insert into {q}.{EMBEDDINGS_TABLE} (key, model, dims, vec, prompt_tokens, run_id)
                        select * from __emb_stage on conflict (key) do nothing""")


def _flags(table_of) -> bytes:
    return bytes(1 if table_of(b) else 0 for b in range(256))


# a float32's exponent is all ones (NaN or +-infinity) when, little-endian, its last byte & 0x7f is
# 0x7f and its third byte has the top bit set: checked for all floats at once with bytes.translate
_EXP_HIGH, _EXP_LOW = _flags(lambda b: b & 0x7F == 0x7F), _flags(lambda b: b & 0x80)


def _nonfinite_rows(raws: list[bytes]) -> set[int]:
    """Indexes of the little-endian float32 vectors in ``raws`` holding NaN or infinity (C speed:
    ~2 ms per 2,048 x 256 floats; the row-by-row look only when there is one)."""
    if not _any_nonfinite(b"".join(raws)):
        return set()
    return {i for i, raw in enumerate(raws) if _any_nonfinite(raw)}


def _any_nonfinite(raw: bytes) -> bool:
    high = int.from_bytes(raw[3::4].translate(_EXP_HIGH), "little")
    return bool(high and high & int.from_bytes(raw[2::4].translate(_EXP_LOW), "little"))


_FLOAT4_OID = 700


def _real_array(raw_le: bytes) -> bytes:
    """Postgres' binary form of a one-dimensional real[] from little-endian float32 bytes."""
    n = len(raw_le) // 4
    be = _network_order(raw_le)
    out = bytearray(20 + 8 * n)
    struct.pack_into(">iiiii", out, 0, 1, 0, _FLOAT4_OID, n, 1)
    out[23::8] = b"\x04" * n  # each element's length (int32 4; its other bytes are already 0)
    for i in range(4):  # the values, interleaved with their lengths (slice assignment: C speed)
        out[24 + i::8] = be[i::4]
    return bytes(out)


def _field(data: bytes | None) -> bytes:
    return b"\xff\xff\xff\xff" if data is None else struct.pack(">i", len(data)) + data


def _copy_binary(rows: list[tuple], raws: list[bytes], model: str, tokens_each: int, run_id: str | None,
                 vector: bool) -> bytes:
    parts = [b"PGCOPY\n\xff\r\n\x00", struct.pack(">ii", 0, 0)]
    model_b, run_b = _field(model.encode()), _field(None if run_id is None else str(run_id).encode())
    tokens_b = _field(struct.pack(">i", int(tokens_each)))
    size = len(raws[0]) if raws else 0
    if size and all(len(raw) == size for raw in raws):
        # one dimension for all (the usual case): every row's elements converted at once, a handful of
        # C-speed operations for the request instead of ~10 per row (2,048 x 256: ~35 ms -> a few ms)
        n = size // 4
        joined = b"".join(raws)
        del raws
        if vector:  # pgvector's binary form: int16 dimension, int16 unused, the floats in network order
            width, values = 4 * n, memoryview(_network_order(joined))
            head = _field(struct.pack(">i", n)) + struct.pack(">ihh", 4 + width, n, 0)
        else:
            width, values = 8 * n, memoryview(_real_elements(joined))
            head = (_field(struct.pack(">i", n)) + struct.pack(">i", 20 + width)
                    + struct.pack(">iiiii", 1, 0, _FLOAT4_OID, n, 1))
        del joined
        tuple_b = struct.pack(">h", 6)
        for i, row in enumerate(rows):
            key = row[0].encode()
            own = _field(struct.pack(">i", int(row[2]))) if len(row) > 2 else tokens_b
            parts += [tuple_b, struct.pack(">i", len(key)), key, model_b, head, values[width * i:width * (i + 1)],
                      own, run_b]
    else:
        for row, raw in zip(rows, raws):
            own = _field(struct.pack(">i", int(row[2]))) if len(row) > 2 else tokens_b
            n = len(raw) // 4
            vec = (struct.pack(">hh", n, 0) + _network_order(raw)) if vector else _real_array(raw)
            parts += [struct.pack(">h", 6), _field(row[0].encode()), model_b, _field(struct.pack(">i", n)),
                      _field(vec), own, run_b]
    parts.append(struct.pack(">h", -1))
    return b"".join(parts)


def _network_order(raw_le: bytes) -> bytes:
    """Little-endian float32 bytes in network (big-endian) order."""
    values = array("f")
    values.frombytes(raw_le)
    if sys.byteorder == "little":
        values.byteswap()
    return values.tobytes()


def _real_elements(raw_le: bytes) -> bytearray:
    """The elements of real[] binary arrays (each value preceded by its int32 length 4, network
    order) from little-endian float32 bytes: ``_real_array`` without the header, for many at once."""
    n = len(raw_le) // 4
    be = _network_order(raw_le)
    out = bytearray(8 * n)
    out[3::8] = b"\x04" * n
    for i in range(4):
        out[4 + i::8] = be[i::4]
    return out
