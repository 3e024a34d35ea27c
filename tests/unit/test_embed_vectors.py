"""operators/embed_vectors.py: the binary COPY stream of a request (all rows converted at once when
they share a dimension, row by row otherwise) and the malloc arena cap behind issue 19.4's RSS bound."""
from __future__ import annotations

import struct
import subprocess
import sys

import pytest

from dbt_pg_llm.operators.embed_vectors import copy_data, vector_to_b64


def _rows_of(stream: bytes) -> list[tuple]:
    """Parse Postgres' binary COPY format back: (key, model, dims, floats, tokens, run_id) per row."""
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
        ndim, flags, oid, n, lbound = struct.unpack_from(">iiiii", arr, 0)
        assert (ndim, flags, oid, lbound) == (1, 0, 700, 1)
        floats = [struct.unpack_from(">if", arr, 20 + 8 * i) for i in range(n)]
        assert all(length == 4 for length, _ in floats)
        out.append((key.decode(), model.decode(), struct.unpack(">i", dims)[0], [v for _, v in floats],
                    struct.unpack(">i", tokens)[0], run.decode() if run is not None else None))


@pytest.mark.parametrize("vectors", [[[0.5, -1.0, 2.0], [3.0, 4.0, -0.25]],  # one dimension: converted at once
                                     [[0.5, -1.0], [3.0, 4.0, -0.25]]])  # mixed: row by row
def test_copy_stream_holds_every_row_key_and_value(vectors):
    rows = [("k1", vector_to_b64(vectors[0]), 7), ("k2", vector_to_b64(vectors[1]))]
    got = _rows_of(copy_data(rows, "embedder", 3, "run-1"))
    assert got == [("k1", "embedder", len(vectors[0]), vectors[0], 7, "run-1"),
                   ("k2", "embedder", len(vectors[1]), vectors[1], 3, "run-1")]
    assert _rows_of(copy_data(rows[1:], "m", 0, None))[0][5] is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_malloc_arenas_are_capped_once_per_process():
    code = ("from dbt_pg_llm.operators.embed_vectors import bound_malloc_arenas as b; "
            "print(b(), b())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True"]
