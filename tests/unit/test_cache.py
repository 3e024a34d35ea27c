import asyncio
import json
import multiprocessing
import time

import pytest

from dbt_pg_llm.models.cache import ResultCache
from dbt_pg_llm.models.journal import CacheEntry, DiskJournal, MemoryBackend
from dbt_pg_llm.errors import ErrorKind, ModelError
from dbt_pg_llm.models.keys import cache_key, fingerprint
from dbt_pg_llm.models.model_io import ModelOutput, TokenUsage

FP = fingerprint(provider="openai", model_version="gpt-4o-mini", system_message=None, temperature=0.0,
                 max_tokens=16)
KEY = cache_key(FP, "classify: great product")


def paid(text="positive", value=None, cost=0.002):
    return ModelOutput(text=text, value=text if value is None else value, confidence=0.93,
                       tokens=TokenUsage(40, 2), truncated=False, model="gpt", latency_ms=321.0,
                       cost_usd=cost, attempts=2)


def failed(kind=ErrorKind.TIMEOUT):
    return ModelOutput.failure(ModelError(kind, "too slow"), model="gpt", latency_ms=30_000)


class Clock:
    def __init__(self, t=1_700_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture(params=["memory", "disk"])
def backend(request, tmp_path):
    b = MemoryBackend() if request.param == "memory" else DiskJournal(str(tmp_path / "journal"))
    yield b
    b.close()


def test_put_then_get_returns_a_hit(backend):
    cache = ResultCache(backend)
    assert cache.get(KEY) is None
    assert cache.put(KEY, paid()) is True
    hit = cache.get(KEY)
    assert hit.cached is True and hit.cost_usd == 0.0 and hit.latency_ms == 0.0
    assert (hit.text, hit.value, hit.confidence, hit.model) == ("positive", "positive", 0.93, "gpt")
    assert hit.tokens == TokenUsage(40, 2) and hit.ok
    entry = cache.get_entry(KEY)
    assert entry.original_cost_usd == 0.002 and entry.valid and entry.expires_at is None
    assert KEY in cache and len(cache) == 1 and list(cache.keys()) == [KEY]


def test_json_values_round_trip_and_are_not_shared(backend):
    cache = ResultCache(backend)
    cache.put(KEY, paid(text='{"a":[1,2]}', value={"a": [1, 2]}))
    first = cache.get(KEY)
    first.value["a"].append(3)
    assert cache.get(KEY).value == {"a": [1, 2]}


def test_failed_outputs_and_hits_are_never_stored(backend):
    cache = ResultCache(backend)
    assert cache.put(KEY, failed()) is False
    assert cache.get(KEY) is None and len(cache) == 0
    cache.put(KEY, paid(cost=0.5))
    assert cache.put(KEY, cache.get(KEY)) is False  # a hit would overwrite the original cost with 0
    assert cache.get_entry(KEY).original_cost_usd == 0.5


def test_ttl_expiry_with_injected_clock(backend):
    clock = Clock()
    cache = ResultCache(backend, ttl_s=60, clock=clock)
    cache.put(KEY, paid())
    entry = cache.get_entry(KEY)
    assert entry.created_at == clock.t and entry.expires_at == clock.t + 60
    clock.t += 59.9
    assert cache.get(KEY) is not None
    clock.t += 0.1
    assert cache.get(KEY) is None
    assert cache.get_entry(KEY).expired(clock.t)  # still kept for audit / replay
    cache.put(KEY, paid())  # a fresh answer starts a new ttl
    assert cache.get(KEY) is not None


def test_invalidate(backend):
    cache = ResultCache(backend)
    assert cache.invalidate(KEY) is False
    cache.put(KEY, paid())
    assert cache.invalidate(KEY) is True
    assert cache.get(KEY) is None
    assert cache.get_entry(KEY).valid is False


def test_entry_serialization_is_plain_json():
    data = CacheEntry.serialize(paid(), 1.0, 61.0)
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"text", "value", "confidence", "prompt_tokens", "completion_tokens", "truncated",
                         "model", "cost_usd", "created_at", "expires_at", "valid"}
    entry = CacheEntry.from_dict(data)
    assert entry.to_dict() == data


def test_validation():
    with pytest.raises(ValueError):
        ResultCache(MemoryBackend(), ttl_s=0)


# -- single flight ---------------------------------------------------------------------------------
@pytest.mark.parametrize("detach", [True, False], ids=["detached", "in-caller"])
def test_single_flight_50_concurrent_callers_one_compute(backend, detach):
    async def main():
        cache = ResultCache(backend)
        calls = 0
        gate = asyncio.Event()

        async def compute():
            nonlocal calls
            calls += 1
            await gate.wait()
            return paid(cost=0.01)

        tasks = [asyncio.ensure_future(cache.get_or_compute(KEY, compute, detach=detach)) for _ in range(50)]
        await asyncio.sleep(0.01)
        assert calls == 1
        gate.set()
        outs = await asyncio.gather(*tasks)
        assert calls == 1
        assert all(o.text == "positive" for o in outs)
        assert sum(o.cost_usd for o in outs) == pytest.approx(0.01)  # paid once, counted once
        assert [o.cached for o in outs].count(False) == 1
        assert cache.get_entry(KEY).original_cost_usd == 0.01  # stored before anyone saw it
        again = await cache.get_or_compute(KEY, compute)  # now a plain hit
        assert again.cached and calls == 1
        assert cache._inflight == {}

    asyncio.run(main())


@pytest.mark.parametrize("detach", [True, False], ids=["detached", "in-caller"])
def test_single_flight_failures_go_to_all_waiters_but_are_not_stored(detach):
    async def main():
        cache = ResultCache(MemoryBackend())
        calls = 0

        async def compute():
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.01)
            return failed() if calls == 1 else paid()

        outs = await asyncio.gather(*(cache.get_or_compute(KEY, compute, detach=detach) for _ in range(50)))
        assert calls == 1
        assert all(o.error_kind is ErrorKind.TIMEOUT and not o.cached for o in outs)
        assert cache.get(KEY) is None
        out = await cache.get_or_compute(KEY, compute)  # the next call tries again
        assert calls == 2 and out.ok and not out.cached
        assert cache.get(KEY) is not None

    asyncio.run(main())


@pytest.mark.parametrize("detach", [True, False], ids=["detached", "in-caller"])
def test_single_flight_exception_reaches_every_waiter_and_is_not_stored(detach):
    async def main():
        cache = ResultCache(MemoryBackend())

        async def compute():
            await asyncio.sleep(0.01)
            raise RuntimeError("bug")

        results = await asyncio.gather(*(cache.get_or_compute(KEY, compute, detach=detach) for _ in range(5)),
                                       return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        assert cache._inflight == {} and len(cache) == 0

    asyncio.run(main())


def test_cancelling_a_caller_does_not_cancel_the_shared_computation():
    async def main():
        cache = ResultCache(MemoryBackend())
        gate = asyncio.Event()
        calls = 0

        async def compute():
            nonlocal calls
            calls += 1
            await gate.wait()
            return paid()

        first = asyncio.ensure_future(cache.get_or_compute(KEY, compute))
        second = asyncio.ensure_future(cache.get_or_compute(KEY, compute))
        await asyncio.sleep(0)
        first.cancel()  # the caller that started the request goes away
        await asyncio.sleep(0)
        gate.set()
        out = await second
        assert out.text == "positive" and calls == 1
        assert first.cancelled()
        assert cache.get(KEY) is not None  # the paid answer was kept

    asyncio.run(main())


def test_different_keys_compute_independently():
    async def main():
        cache = ResultCache(MemoryBackend())
        seen = []

        def compute_for(k):
            async def compute():
                seen.append(k)
                await asyncio.sleep(0)
                return paid(text=k)
            return compute

        keys = [cache_key(FP, f"p{i}") for i in range(10)]
        outs = await asyncio.gather(*(cache.get_or_compute(k, compute_for(k)) for k in keys * 3))
        assert sorted(seen) == sorted(keys)
        assert [o.text for o in outs] == keys * 3

    asyncio.run(main())


# -- the journal -----------------------------------------------------------------------------------
def test_journal_survives_reopening(tmp_path):
    directory = str(tmp_path / "j")
    with DiskJournal(directory) as journal:
        cache = ResultCache(journal)
        for i in range(20):
            cache.put(cache_key(FP, f"p{i}"), paid(text=f"t{i}"))
        cache.invalidate(cache_key(FP, "p0"))
    reopened = ResultCache(DiskJournal(directory))  # a brand-new diskcache.Cache on the same directory
    assert len(reopened) == 20
    assert reopened.get(cache_key(FP, "p0")) is None
    assert reopened.get(cache_key(FP, "p7")).text == "t7"
    assert sorted(reopened.keys()) == sorted(cache_key(FP, f"p{i}") for i in range(20))
    reopened.close()


def test_journal_stores_json_text_and_never_evicts(tmp_path):
    journal = DiskJournal(str(tmp_path / "j"))
    assert journal._cache.eviction_policy == "none"
    ResultCache(journal).put(KEY, paid())
    raw = journal._cache.get(KEY)
    assert isinstance(raw, str) and json.loads(raw)["text"] == "positive"
    journal.close()


def _write_from_other_process(directory, key):
    journal = DiskJournal(directory)
    ResultCache(journal).put(key, paid(text="from child"))
    journal.close()


def test_journal_is_shared_across_processes(tmp_path):
    directory = str(tmp_path / "j")
    journal = DiskJournal(directory)
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_write_from_other_process, args=(directory, KEY))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert ResultCache(journal).get(KEY).text == "from child"
    journal.close()


def _journal_rss_growth_kb(directory, n, queue):
    """Peak RSS growth (kB) of this process while journaling and re-reading ``n`` ~1 kB answers."""
    def peak_kb():
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
        return int(status["VmHWM"].split()[0])

    journal = DiskJournal(directory)
    before = peak_kb()
    for start in range(0, n, 500):
        journal.set_many([(f"key-{i}", {"text": "answer " * 150, "i": i}) for i in range(start, start + 500)])
    for i in range(n):
        journal.get(f"key-{i}")
    queue.put(peak_kb() - before)
    journal.close()


def test_journal_memory_stays_bounded_as_it_grows(tmp_path):
    # diskcache's defaults (a 64 MB mmap of the file, a 32 MB page cache per connection) made the
    # dbt process grow ~1 kB per journaled answer: +46 MB peak RSS at 50,000 answers (bench/memory.py)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_journal_rss_growth_kb, args=(str(tmp_path / "j"), 20_000, queue))
    proc.start()
    growth_kb = queue.get(timeout=120)
    proc.join(60)
    assert growth_kb < 10 * 1024, f"journaling 20,000 answers (~20 MB on disk) grew peak RSS by {growth_kb} kB"


def test_journal_bounds_sqlite_memory_of_an_existing_journal(tmp_path):
    import diskcache

    directory = str(tmp_path / "j")
    diskcache.Cache(directory).close()  # made with diskcache's defaults, which it stores in the file
    journal = DiskJournal(directory)
    assert (journal._cache.sqlite_mmap_size, journal._cache.sqlite_cache_size) == (0, 1024)
    journal.close()


def test_journal_put_cost(tmp_path):
    journal = DiskJournal(str(tmp_path / "j"))
    cache = ResultCache(journal)
    n = 500
    keys = [cache_key(FP, f"bench {i}") for i in range(n)]
    out = paid()
    t0 = time.perf_counter()
    for k in keys:
        cache.put(k, out)
    per_put = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for k in keys:
        cache.get(k)
    per_get = (time.perf_counter() - t0) / n
    print(f"\nDiskJournal put {per_put * 1e6:.0f} us, get {per_get * 1e6:.0f} us (n={n})")
    assert per_put < 0.01  # far below the cost of the API call it protects
    journal.close()


def test_request_keys_are_the_documented_fingerprint_whatever_the_memo_holds():
    """fingerprint_of memoizes per (config, format object, parameters): every combination must still
    give the key the documented formula gives, and equal formats in other objects the same key."""
    from dbt_pg_llm.models.config import ModelConfig
    from dbt_pg_llm.models.keys import request_key
    from dbt_pg_llm.models.model_io import ModelInput, ResponseFormat

    config = ModelConfig.from_dict({"api_url": "http://x/v1", "model_version": "v1", "temperature": 0.2,
                                    "max_tokens": 50}, "m")
    other = ModelConfig.from_dict({"api_url": "http://x/v1", "model_version": "v2", "max_tokens": 50}, "m")
    labels, labels_again = ResponseFormat.one_of(["a", "b"]), ResponseFormat.one_of(["a", "b"])
    schema = ResponseFormat.json({"type": "object"})
    seen = set()
    for _ in range(2):  # the second round is served by the memo
        for cfg in (config, other):
            for fmt in (ResponseFormat(), labels, labels_again, schema):
                for system in (None, "sys"):
                    for stop in ((), ("\n",)):
                        for want in (False, True):
                            inp = ModelInput("p", system_message=system, stop=stop, response_format=fmt,
                                             want_confidence=want)
                            expected = cache_key(fingerprint(
                                provider=cfg.provider, model_version=cfg.model_version, system_message=system,
                                temperature=cfg.temperature, max_tokens=cfg.max_tokens, stop=stop,
                                response_format=fmt.to_canonical(),
                                confidence=want and fmt.type != "labels"), "p")
                            assert request_key(cfg, inp) == expected
                            seen.add(expected)
    assert len(seen) == 2 * 3 * 2 * 2 * 2 - 2 * 2 * 2  # labels ignore want_confidence


class CountingBackend(MemoryBackend):
    """Records each transaction's keys (``set_many`` is one transaction)."""

    def __init__(self):
        super().__init__()
        self.transactions: list[list[str]] = []

    def set_many(self, items):
        self.transactions.append([key for key, _ in items])
        super().set_many(items)


def _answers_arriving(cache, keys, gap_s):
    """One computation per key, each answer arriving ``gap_s`` after the previous one; returns, for
    each caller, whether its answer was already stored when the caller got it."""
    async def one(i, key):
        async def compute():
            await asyncio.sleep(i * gap_s)
            return paid(f"answer {i}")
        await cache.get_or_compute(key, compute, detach=False)
        return key in cache.backend.keys()

    async def main():
        return await asyncio.gather(*(one(i, k) for i, k in enumerate(keys)))
    return asyncio.run(main())


def test_answers_arriving_within_the_commit_delay_share_one_transaction():
    backend = CountingBackend()
    keys = [f"k{i}" for i in range(6)]
    stored_before_return = _answers_arriving(ResultCache(backend, commit_delay_s=0.2), keys, gap_s=0.01)
    assert backend.transactions == [keys]  # one commit for answers spread over 50 ms of loop iterations
    assert all(stored_before_return)  # nobody got an answer that was not yet written


def test_commit_delay_zero_commits_each_loop_iteration_apart():
    backend = CountingBackend()
    keys = [f"k{i}" for i in range(4)]
    assert all(_answers_arriving(ResultCache(backend, commit_delay_s=0), keys, gap_s=0.01))
    assert backend.transactions == [[k] for k in keys]


def test_a_full_group_commits_at_once_without_waiting_for_its_timer():
    backend = CountingBackend()
    keys = [f"k{i}" for i in range(4)]
    t0 = time.perf_counter()
    assert all(_answers_arriving(ResultCache(backend, commit_delay_s=30, commit_max=2), keys, gap_s=0))
    assert time.perf_counter() - t0 < 5  # not the 30 s timer
    assert backend.transactions == [keys[0:2], keys[2:4]]


def test_commit_settings_are_checked():
    with pytest.raises(ValueError, match="commit_delay_s"):
        ResultCache(MemoryBackend(), commit_delay_s=-1)
    with pytest.raises(ValueError, match="commit_max"):
        ResultCache(MemoryBackend(), commit_max=0)


def test_invalidate_older_drops_only_entries_written_at_or_before_their_keys_cutoff(backend):
    """Decision 0024: a key invalidated in the database at t=150 (from any machine) must not be
    served from an entry journaled at t=100; one journaled at t=200 is a new answer."""
    clock = Clock(100.0)
    cache = ResultCache(backend, clock=clock)
    old, new = KEY, cache_key(FP, "classify: awful product")
    cache.put(old, paid())
    clock.t = 200.0
    cache.put(new, paid("negative"))
    assert cache.invalidate_older({old: 150.0, new: 150.0, "absent": 150.0}) == 1
    assert cache.get(old) is None and cache.get_entry(old).valid is False  # kept, marked
    assert cache.get(new).text == "negative"
    assert cache.invalidate_older({old: 150.0}) == 0  # already invalid: nothing rewritten
    assert cache.get(new, not_before=200.0) is None and cache.get(new, not_before=199.9) is not None


def test_the_durability_gate_keeps_paid_answers_off_disk_to_max_unjournaled(tmp_path):
    """Decision 0024: with a slow group commit, answers used to pile up unjournaled behind the
    requests in flight; through the gate, calls started but not yet stored never exceed
    max_unjournaled(limit), and a cache with nothing on disk takes no gate."""
    from dbt_pg_llm.models.cache import max_unjournaled

    assert [max_unjournaled(n) for n in (1, 4, 8, 32, 64)] == [2, 5, 9, 36, 72]
    cache = ResultCache(DiskJournal(str(tmp_path / "journal")), commit_delay_s=0.05)
    state = {"off_disk": 0, "most": 0}

    async def one(i):
        async def compute():
            state["off_disk"] += 1  # sent: paid from here on
            state["most"] = max(state["most"], state["off_disk"])
            await asyncio.sleep(0.001)
            return paid(f"answer {i}")
        await cache.get_or_compute(f"k{i}", compute, detach=False, gate=cache.durability_gate("m", 8))
        state["off_disk"] -= 1  # returned: committed

    async def main():
        assert ResultCache(MemoryBackend()).durability_gate("m", 8) is None
        await asyncio.gather(*(one(i) for i in range(60)))
    try:
        asyncio.run(main())
    finally:
        cache.close()
    assert state["most"] == max_unjournaled(8)  # without the gate: all 60 within one commit delay


def test_stored_finds_exactly_the_keys_with_an_entry_in_bulk(backend):
    """ResultCache.stored: the embed fill's journal check of a whole slice (2,048 keys) at once
    (DiskJournal: indexed queries of 900 keys, not a ``get`` per key); an invalidated entry is
    still stored (``get`` decides whether it is served)."""
    cache = ResultCache(backend)
    keys = [cache_key(FP, f"text {i}") for i in range(2000)]
    cache.put_many((k, paid()) for k in keys[::3])
    cache.invalidate(keys[3])
    assert cache.stored(keys + ["absent"]) == set(keys[::3])
    assert cache.stored([]) == set()
