"""operators/embed_vectors.py: the binary COPY stream of a request (all rows converted at once when
they share a dimension, row by row otherwise) and the malloc arena cap behind issue 19.4's RSS bound."""
from __future__ import annotations

import math
import struct
import subprocess
import sys

import pytest

from dbt_pg_llm.pg.vectors import copy_data, vector_to_b64


def _rows_of(stream: bytes, vector: bool = False) -> list[tuple]:
    """Parse Postgres' binary COPY format back: (key, model, dims, floats, tokens, run_id) per row;
    the vector field as pgvector's binary form (``vector``) or real[]'s."""
    assert stream.startswith(b"PGCOPY\n\xff\r\n\x00")
    pos, out = 19, []
    while True:
        (count,) = struct.unpack_from(">h", stream, pos)
        pos += 2
        if count == -1:
            assert pos == len(stream)
            return out
        fields = []
        for _ in range(count):
            (size,) = struct.unpack_from(">i", stream, pos)
            pos += 4
            fields.append(None if size == -1 else stream[pos:pos + size])
            pos += max(size, 0)
        key, model, dims, arr, tokens, run = fields
        if vector:  # vector_recv: int16 dim, int16 unused, float4 x dim
            n, unused = struct.unpack_from(">hh", arr, 0)
            assert unused == 0 and len(arr) == 4 + 4 * n
            values = list(struct.unpack_from(f">{n}f", arr, 4))
        else:
            ndim, flags, oid, n, lbound = struct.unpack_from(">iiiii", arr, 0)
            assert (ndim, flags, oid, lbound) == (1, 0, 700, 1)
            floats = [struct.unpack_from(">if", arr, 20 + 8 * i) for i in range(n)]
            assert all(length == 4 for length, _ in floats)
            values = [v for _, v in floats]
        out.append((key.decode(), model.decode(), struct.unpack(">i", dims)[0], values,
                    struct.unpack(">i", tokens)[0], run.decode() if run is not None else None))


@pytest.mark.parametrize("vector", [False, True], ids=["real_array", "pgvector"])
@pytest.mark.parametrize("vectors", [[[0.5, -1.0, 2.0], [3.0, 4.0, -0.25]],  # one dimension: converted at once
                                     [[0.5, -1.0], [3.0, 4.0, -0.25]]])  # mixed: row by row
def test_copy_stream_holds_every_row_key_and_value(vectors, vector):
    rows = [("k1", vector_to_b64(vectors[0]), 7), ("k2", vector_to_b64(vectors[1]))]
    data, rejected = copy_data(rows, "embedder", 3, "run-1", vector=vector)
    assert rejected == []
    assert _rows_of(data, vector) == [("k1", "embedder", len(vectors[0]), vectors[0], 7, "run-1"),
                                      ("k2", "embedder", len(vectors[1]), vectors[1], 3, "run-1")]
    assert _rows_of(copy_data(rows[1:], "m", 0, None, vector=vector)[0], vector)[0][5] is None


@pytest.mark.parametrize("vector", [False, True], ids=["real_array", "pgvector"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_vector_with_nan_or_infinity_is_left_out_and_named(bad, vector):
    """pgvector refuses them (the whole COPY would fail), and no similarity can use them: only that
    row is left out. Large and tiny finite values (all exponent bits but one set, subnormals) stay."""
    edge = [3.4e38, -3.4e38, 1e-45, -0.0]
    rows = [("ok1", vector_to_b64([0.5, 1.0, 2.0, 4.0])), ("bad", vector_to_b64([0.5, bad, 2.0, 4.0])),
            ("edge", vector_to_b64(edge))]
    data, rejected = copy_data(rows, "m", vector=vector)
    assert rejected == ["bad"]
    got = _rows_of(data, vector)
    assert [r[0] for r in got] == ["ok1", "edge"] and got[1][3] == pytest.approx(edge, rel=1e-6)
    assert copy_data(rows[1:2], "m", vector=vector) == (None, ["bad"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_malloc_arenas_are_capped_once_per_process():
    code = ("from dbt_pg_llm.pg.vectors import bound_malloc_arenas as b; "
            "print(b(), b())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True"]
