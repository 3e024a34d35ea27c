"""The call spool (call_spool.py): records on disk until written, segments deleted once written."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from dbt_pg_llm.models.call_spool import orphaned
from dbt_pg_llm.models.logs import BufferedSink, ModelLog


def lines(directory):
    return sorted(line for p in directory.glob("*.jsonl") for line in p.read_text().splitlines())


def test_records_stay_on_disk_until_written(tmp_path):
    sink = BufferedSink(spool_dir=str(tmp_path))
    assert not list(tmp_path.glob("*.jsonl"))  # no file before the first record
    for i in range(3):
        sink.emit(ModelLog(model="m", input_hash=f"k{i}", cost_usd=0.5, context={"run_id": "r"}))
    assert len(lines(tmp_path)) == 3  # on disk as soon as emitted
    drained = sink.drain()
    assert len({log.call_id for log in drained}) == 3 and all(log.call_id for log in drained)
    sink.emit(ModelLog(model="m", input_hash="k3"))
    assert len(lines(tmp_path)) == 4  # drained but not yet written: still there
    sink.written(len(drained))
    remaining = [json.loads(line) for line in lines(tmp_path)]
    assert [r["input_hash"] for r in remaining] == ["k3"]  # the written segment is gone
    assert not orphaned(next(tmp_path.glob("*.jsonl")).name)  # ours, alive
    sink.written(len(sink.drain()))
    assert not list(tmp_path.glob("*.jsonl"))  # everything written: nothing left behind


def test_a_dead_process_segment_is_orphaned(tmp_path):
    code = ("import sys; from dbt_pg_llm.models.logs import BufferedSink, ModelLog; "
            "BufferedSink(spool_dir=sys.argv[1]).emit(ModelLog(model='m'))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    (segment,) = tmp_path.glob("*.jsonl")
    assert orphaned(segment.name) and not orphaned("other.jsonl")
    assert json.loads(segment.read_text())["model"] == "m"
    os.unlink(segment)


def test_a_request_announced_as_sent_keeps_its_segment_until_its_record_is_written(tmp_path):
    sink = BufferedSink(spool_dir=str(tmp_path))
    sink.sending("c-1", {"model": "m", "input_hash": "k", "context": {"run_id": "r"}})
    sink.written(len(sink.drain()))
    assert len(lines(tmp_path)) == 1  # the marker: its request has no record yet
    sink.emit(ModelLog(model="m", input_hash="k", call_id="c-1", cost_usd=0.5))
    sink.written(len(sink.drain()))
    assert lines(tmp_path) == []  # its record was written: marker and record are gone
