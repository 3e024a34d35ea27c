"""Embedding vectors on the wire and in Postgres: base64 float32 (OpenAI's ``encoding_format:
base64``, also the journal's form) and a binary COPY into ``<schema>.llm_embeddings``.

Binary, not text: no float is formatted or parsed (psycopg2's list adaptation cost ~1 s per
2,048 x 256 floats, a text COPY ~0.6 s). ``store_vectors`` COPYs straight into the table; when a key
is already there (another writer got in first) it goes through a staging table instead.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import struct
import sys
from array import array

__all__ = ["EMBEDDINGS_TABLE", "vector_to_b64", "vector_from_b64", "parse_embeddings", "store_vectors", "copy_data",
           "store_copy", "bound_malloc_arenas"]

EMBEDDINGS_TABLE = "llm_embeddings"


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


def store_vectors(conn, q: str, rows: list[tuple[str, str]], model_name: str, tokens_each: int = 0,
                  run_id: str | None = None) -> None:
    """(key, base64 float32 vector) rows into ``<q>.llm_embeddings`` (``q``: the quoted audit schema)
    by binary COPY; a key already there is left as it is."""
    if rows:
        store_copy(conn, q, copy_data(rows, model_name, tokens_each, run_id))


def copy_data(rows: list[tuple[str, str]], model_name: str, tokens_each: int = 0, run_id: str | None = None) -> bytes:
    """The binary COPY stream of ``store_vectors``' rows: built outside any lock (CPU only), then
    handed to ``store_copy`` on the connection."""
    return _copy_binary(rows, model_name, tokens_each, run_id)


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
        cur.execute("create temp table if not exists __emb_stage (key text, model text, dims integer, vec real[], "
                    "prompt_tokens integer, run_id text) on commit preserve rows")
        cur.execute("truncate __emb_stage")
        cur.copy_expert("copy __emb_stage from stdin with (format binary)", io.BytesIO(data))
        cur.execute(f"""insert into {q}.{EMBEDDINGS_TABLE} (key, model, dims, vec, prompt_tokens, run_id)
                        select * from __emb_stage on conflict (key) do nothing""")


_FLOAT4_OID = 700


def _real_array(raw_le: bytes) -> bytes:
    """Postgres' binary form of a one-dimensional real[] from little-endian float32 bytes."""
    n = len(raw_le) // 4
    values = array("f")
    values.frombytes(raw_le)
    if sys.byteorder == "little":
        values.byteswap()  # to network order
    be = values.tobytes()
    out = bytearray(20 + 8 * n)
    struct.pack_into(">iiiii", out, 0, 1, 0, _FLOAT4_OID, n, 1)
    out[23::8] = b"\x04" * n  # each element's length (int32 4; its other bytes are already 0)
    for i in range(4):  # the values, interleaved with their lengths (slice assignment: C speed)
        out[24 + i::8] = be[i::4]
    return bytes(out)


def _field(data: bytes | None) -> bytes:
    return b"\xff\xff\xff\xff" if data is None else struct.pack(">i", len(data)) + data


def _copy_binary(rows: list[tuple[str, str]], model: str, tokens_each: int, run_id: str | None) -> bytes:
    parts = [b"PGCOPY\n\xff\r\n\x00", struct.pack(">ii", 0, 0)]
    model_b, run_b = _field(model.encode()), _field(None if run_id is None else str(run_id).encode())
    tokens_b = _field(struct.pack(">i", int(tokens_each)))
    raws = [binascii.a2b_base64(row[1]) for row in rows]  # (key, b64) or (key, b64, its own prompt tokens)
    size = len(raws[0]) if raws else 0
    if size and all(len(raw) == size for raw in raws):
        # one dimension for all (the usual case): every row's elements converted at once, a handful of
        # C-speed operations for the request instead of ~10 per row (2,048 x 256: ~35 ms -> a few ms)
        n = size // 4
        arrays = memoryview(_real_elements(b"".join(raws)))
        del raws
        head = (_field(struct.pack(">i", n)) + struct.pack(">i", 20 + 8 * n)
                + struct.pack(">iiiii", 1, 0, _FLOAT4_OID, n, 1))
        tuple_b = struct.pack(">h", 6)
        for i, row in enumerate(rows):
            key = row[0].encode()
            own = _field(struct.pack(">i", int(row[2]))) if len(row) > 2 else tokens_b
            parts += [tuple_b, struct.pack(">i", len(key)), key, model_b, head, arrays[8 * n * i:8 * n * (i + 1)],
                      own, run_b]
    else:
        for row, raw in zip(rows, raws):
            own = _field(struct.pack(">i", int(row[2]))) if len(row) > 2 else tokens_b
            parts += [struct.pack(">h", 6), _field(row[0].encode()), model_b, _field(struct.pack(">i", len(raw) // 4)),
                      _field(_real_array(raw)), own, run_b]
    parts.append(struct.pack(">h", -1))
    return b"".join(parts)


def _real_elements(raw_le: bytes) -> bytearray:
    """The elements of real[] binary arrays (each value preceded by its int32 length 4, network
    order) from little-endian float32 bytes: ``_real_array`` without the header, for many at once."""
    n = len(raw_le) // 4
    values = array("f")
    values.frombytes(raw_le)
    if sys.byteorder == "little":
        values.byteswap()
    be = values.tobytes()
    out = bytearray(8 * n)
    out[3::8] = b"\x04" * n
    for i in range(4):
        out[4 + i::8] = be[i::4]
    return out
