"""Paid output survives real faults of a dbt run: Postgres stopped mid-run, dbt killed with SIGKILL.

Each test runs ``dbt run -s review_sentiment`` in a subprocess against its own embedded Postgres
(stopping the shared one would disturb other tests) and a simulator answering in ~150 ms, injects
the fault once the simulator's ledger shows the run is under way, then reruns to completion and
compares the ledger with ``llm_results``: no answer paid twice except those in flight or waiting
for the journal's commit at a ``kill -9`` (at most max_concurrency together), none lost. The
figures are printed (``-s``) for the record.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from dbt_pg_llm.models.cache import max_unjournaled
from dbt_pg_llm.embedded_pg import EmbeddedPostgres, default_data_dir
from dbt_pg_llm.simulator import SimulatorConfig
from dbt_harness import INTEGRATION, DbtProject

pytestmark = pytest.mark.functional
LATENCY_MS = 150
MAX_CONCURRENCY = 32  # the profile's max_concurrency for `sim`: at most this many in flight


@pytest.fixture(scope="module")
def own_pg():
    """An embedded Postgres of this module only: the tests stop and restart it."""
    data_dir = default_data_dir().parent / f"durability-{uuid.uuid4().hex[:8]}"
    server = EmbeddedPostgres(data_dir)
    info = server.start()
    try:
        yield server, info
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        for suffix in (".lock", ".clients", ".keep"):
            Path(str(data_dir) + suffix).unlink(missing_ok=True)


@pytest.fixture
def project(own_pg, simulator_factory, tmp_path):
    server, info = own_pg
    sim = simulator_factory(SimulatorConfig(latency_ms=LATENCY_MS))
    path = tmp_path / "integration_tests"
    shutil.copytree(INTEGRATION, path, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages", ".user.yml"))
    proj = DbtProject(path, info, sim.base_url, schema=f"dur_{uuid.uuid4().hex[:8]}")
    proj.llm_env = {"LLM_AUDIT_SCHEMA": f"llm_dur_{uuid.uuid4().hex[:8]}", "LLM_JOURNAL_DIR": str(tmp_path / "journal")}
    proj.run("seed")
    sim.reset()
    proj.sim, proj.server = sim, server
    return proj


def start_dbt(project, tmp_path, select: str = "review_sentiment") -> subprocess.Popen:
    """`dbt run -s <select>` of ``project`` in a subprocess (to be killed); also used by test_dbt_embed_runs."""
    dbt = str(Path(sys.executable).parent / "dbt")
    return subprocess.Popen(
        [dbt, "run", "-s", select, "--project-dir", str(project.path), "--profiles-dir",
         str(project.path), "--target-path", str(tmp_path / "target_sub"), "--log-path", str(tmp_path / "logs_sub")],
        env={**os.environ, **project.env()}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_requests(sim, proc, at_least: int, timeout_s: float = 120) -> None:
    """Until the simulator has received ``at_least`` requests (the subprocess ``proc`` still alive)."""
    deadline = time.monotonic() + timeout_s
    while sim.stats()["requests"] < at_least:
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "the dbt run did not get going"
        time.sleep(0.05)


def kill_after_requests(sim, proc, at_least: int, timeout_s: float = 120, settle_s: float = 0.0) -> None:
    """SIGKILL ``proc`` once the simulator has received ``at_least`` requests (and ``settle_s`` more
    seconds have passed), and reap it; also used by test_dbt_embed_runs."""
    try:
        wait_for_requests(sim, proc, at_least, timeout_s=timeout_s)
        time.sleep(settle_s)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def _ledger(project, label: str) -> dict:
    stats = project.sim.stats()
    by_prompt = stats["by_prompt_sha256"]
    figures = {
        "requests": stats["requests"], "distinct_prompts": len(by_prompt),
        "paid_twice": sum(1 for n in by_prompt.values() if n > 1),
        "llm_results": project.scalar(f'select count(*) from "{project.audit}".llm_results'),
        "distinct_texts": project.scalar(f"select count(distinct review_text) from {project.seed_table()} "
                                         "where review_text is not null"),
        # issue 17.1: what the audit says was paid, against the ledger (requests, prompt tokens)
        "prompt_tokens": stats["prompt_tokens"],
        "llm_calls": project.query(f'select count(*), coalesce(sum(prompt_tokens), 0) from "{project.audit}".llm_calls '
                                   "where not cached")[0],
        "llm_runs": project.query(f'select sum(requests), sum(prompt_tokens) from "{project.audit}".llm_runs')[0],
    }
    print(f"\n[ledger] {label}: " + " ".join(f"{k}={v}" for k, v in figures.items()))
    return figures


def test_postgres_stopped_mid_run_then_rerun_pays_nothing_twice(project, tmp_path):
    proc = start_dbt(project, tmp_path)
    try:
        wait_for_requests(project.sim, proc, 100)
        project.server.stop()  # the database goes away in the middle of the fill
        output = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
        project.server.start()
    at_stop = project.sim.stats()["requests"]
    print(f"\n[ledger] Postgres stopped mid-run: the first run paid {at_stop} requests; exit code {proc.returncode}")
    print("\n".join(line for line in output.splitlines() if "pg_llm" in line or "Completed" in line or "Exited" in line))
    assert proc.returncode != 0
    assert "keyboard interrupt" not in output.lower(), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    # whichever connection noticed first (the writer or the reader), the error says where the answers are
    assert ("the database connection broke" in output or "could not write" in output) \
        and "kept in the engine's journal" in output, output[-3000:]
    assert "WARNING:dbt_pg_llm" not in output and "ERROR:dbt_pg_llm" not in output  # all through dbt's logger
    project.run("run", "-s", "review_sentiment")
    after = _ledger(project, "after Postgres restart and rerun")
    assert after["paid_twice"] == 0  # what the first run paid came from the journal
    assert after["llm_results"] == after["distinct_texts"] == after["distinct_prompts"]  # 0 lost
    assert after["requests"] == after["distinct_texts"]
    # every request of the run that lost its database is counted (its call spool, replayed by the rerun)
    ledger = (after["requests"], after["prompt_tokens"])
    assert tuple(after["llm_calls"]) == ledger and tuple(after["llm_runs"]) == ledger, after


# A process mapping prompts through the engine with a journal whose group commit waits ``delay`` s.
ENGINE_CHILD = r"""
import sys
from dbt_pg_llm import DiskJournal, Engine, Model, ModelInput, ResultCache
url, journal, concurrency, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
engine = Engine([Model("sim", {"api_url": url, "model_version": "sim-small", "api_key": "sk-test-0123456789",
                               "max_concurrency": concurrency, "retry": {"max_retries": 0}})],
                cache=ResultCache(DiskJournal(journal), commit_delay_s=delay, commit_max=100000))
for _ in engine.map_unordered("sim", ((i, ModelInput(f"prompt {i}")) for i in range(100000)), window=64):
    pass
"""


def test_kill_9_loses_at_most_max_concurrency_paid_answers_however_slow_the_journal_commit(simulator_factory,
                                                                                           tmp_path):
    """Decision 0021: the paid answers not yet on disk (in flight, or received and waiting for the
    journal's group commit) are at most ``max_unjournaled(max_concurrency)`` at any instant. With a
    0.5 s group commit and answers every 20 ms, those waiting for the commit used to pile up
    behind the 4 requests in flight (a kill -9 at 40-48 paid requests found none of them in the
    journal); now at most 4 + 1 are missing."""
    import hashlib

    from dbt_pg_llm import DiskJournal, Engine, Model, ModelInput, ResultCache

    concurrency, delay_s = 4, 0.5
    sim = simulator_factory(SimulatorConfig(latency_ms=20))
    journal = str(tmp_path / "journal")
    proc = subprocess.Popen([sys.executable, "-c", ENGINE_CHILD, sim.base_url, journal, str(concurrency),
                             str(delay_s)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kill_after_requests(sim, proc, 10 * concurrency, timeout_s=60)
    ledger = sim.stats()
    paid = set(ledger["by_prompt_sha256"])
    keys = Engine([Model("sim", {"api_url": sim.base_url, "model_version": "sim-small",
                                 "api_key": "sk-test-0123456789", "max_concurrency": concurrency})])
    prompts = [f"prompt {i}" for i in range(ledger["requests"] + 1000)]
    kept = ResultCache(DiskJournal(journal))
    try:
        unkept = [p for p in prompts if hashlib.sha256(p.encode()).hexdigest() in paid
                  and kept.get(keys.key_of("sim", ModelInput(p))) is None]
    finally:
        kept.close()
    print(f"\n[ledger] kill -9 with a {delay_s} s group commit: {ledger['requests']} requests paid, "
          f"{len(unkept)} of them not in the journal (max_concurrency {concurrency})")
    assert len(paid) == ledger["requests"]  # each prompt was sent once
    assert len(unkept) <= max_unjournaled(concurrency)  # 4 in flight + 1 waiting for the commit


def test_kill_9_mid_run_leaves_a_run_row_and_the_rerun_loses_nothing(project, tmp_path):
    kill_after_requests(project.sim, start_dbt(project, tmp_path), 150)
    at_kill = project.sim.stats()["requests"]
    rows = project.query(f'select run_id, status from "{project.audit}".llm_runs')
    assert len(rows) == 1 and rows[0][1] == "running", rows  # the killed run left its row
    calls = project.scalar(f'select count(*) from "{project.audit}".llm_calls where not cached')
    print(f"\n[ledger] kill -9 mid-run: simulator requests={at_kill}, llm_calls rows written before the kill={calls}")
    # time passes: its heartbeat is older than the threshold, so the next run marks it crashed
    project.query(f"update \"{project.audit}\".llm_runs set heartbeat_at = now() - interval '1 hour'")
    project.run("run", "-s", "review_sentiment")
    statuses = dict(project.query(f'select run_id, status from "{project.audit}".llm_runs'))
    assert statuses[rows[0][0]] == "crashed" and sorted(statuses.values()) == ["crashed", "success"], statuses
    after = _ledger(project, "after kill -9 and rerun")
    # Paid again: only the answers of the killed run not yet on disk, in flight or waiting for the
    # journal's group commit: at most max_unjournaled(32) = 32 + 4 together (decision 0021), however
    # late the commit runs on a loaded box. Every extra request counts (a key paid 3 times: 2).
    assert after["requests"] - after["distinct_prompts"] <= max_unjournaled(MAX_CONCURRENCY)
    assert after["llm_results"] == after["distinct_texts"] == after["distinct_prompts"]  # 0 lost
    # the killed run's unlogged requests came back from its call spool; only answers it never read are missing
    assert tuple(after["llm_runs"]) == tuple(after["llm_calls"]), after
    # (a request announced as sent when the process died is a row of kind 'lost', whether or not it
    # reached the provider: the two may differ by the requests in flight, never more)
    assert abs(after["requests"] - after["llm_calls"][0]) <= MAX_CONCURRENCY, after
