import asyncio
import time

import pytest

from dbt_pg_llm.models.pool import RequestPool, TokenBucket


class FakeTime:
    """A clock that only moves when the pool sleeps (the pool's head waiter is the only sleeper)."""

    def __init__(self):
        self.t = 0.0
        self.sleeps = []

    def clock(self):
        return self.t

    async def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


def run(coro):
    return asyncio.run(coro)


def fake_pool(max_concurrency=100, **kw):
    ft = FakeTime()
    return RequestPool(max_concurrency, clock=ft.clock, sleep=ft.sleep, **kw), ft


async def admit_times(pool, ft, n, tokens=0):
    """Start n requests in order; return the fake time at which each was admitted."""
    times = [None] * n

    async def one(i):
        async with pool.slot(tokens):
            times[i] = ft.t

    tasks = []
    for i in range(n):
        tasks.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*tasks)
    return times


def test_concurrency_is_capped_and_released():
    async def main():
        pool = RequestPool(3)
        peak = 0
        release = asyncio.Event()

        async def one():
            nonlocal peak
            async with pool.slot():
                peak = max(peak, pool.in_flight)
                await release.wait()

        tasks = [asyncio.ensure_future(one()) for _ in range(20)]
        await asyncio.sleep(0.01)
        assert pool.in_flight == 3 and pool.waiting == 17
        release.set()
        await asyncio.gather(*tasks)
        assert peak == 3
        assert pool.in_flight == 0 and pool.waiting == 0

    run(main())


def test_freed_slots_admit_every_waiter_that_fits_at_once():
    """Admission must not take one event-loop iteration per waiter: with hundreds queued, a queue
    whose head admits itself and then wakes the next one left ~1 in 5 slots idle at 2,000 req/s."""
    async def main():
        pool = RequestPool(50)
        holders = [pool.slot() for _ in range(50)]
        for slot in holders:
            await slot.__aenter__()
        started = []

        async def one(i):
            async with pool.slot():
                started.append(i)
                await asyncio.sleep(3600)

        tasks = [asyncio.ensure_future(one(i)) for i in range(80)]
        await asyncio.sleep(0)
        assert pool.waiting == 80 and started == []
        for slot in holders:  # 50 requests finish in the same loop iteration
            await slot.__aexit__(None, None, None)
        await asyncio.sleep(0)  # one iteration: every admitted waiter resumes
        assert started == list(range(50)) and pool.in_flight == 50 and pool.waiting == 30
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert pool.in_flight == 0 and pool.waiting == 0

    run(main())


def test_a_waiter_cancelled_after_admission_gives_its_slot_and_budget_back():
    async def main():
        pool = RequestPool(1, rpm=6000)
        first = pool.slot()
        await first.__aenter__()
        entered = []

        async def one():
            async with pool.slot():
                entered.append(1)

        waiter = asyncio.ensure_future(one())
        await asyncio.sleep(0)
        bucket = pool._rpm
        tokens_before, updated_before = bucket.tokens, bucket.updated
        await first.__aexit__(None, None, None)  # admits the waiter (slot and RPM token taken) ...
        assert pool.in_flight == 1
        waiter.cancel()  # ... which is cancelled before it resumes
        await asyncio.gather(waiter, return_exceptions=True)
        assert entered == [] and pool.in_flight == 0 and pool.waiting == 0
        # no token lost: what was there, plus what the bucket refilled meanwhile (its own clock; on a
        # loaded box that refill alone exceeded a fixed 0.01 tolerance)
        refilled = (bucket.updated - updated_before) * bucket.rate
        assert bucket.tokens == pytest.approx(min(bucket.capacity, tokens_before + refilled), abs=1e-6)

    run(main())


def test_fifo_order_under_contention():
    async def main():
        pool = RequestPool(1)
        order = []

        async def one(i):
            async with pool.slot():
                order.append(i)
                await asyncio.sleep(0)

        await asyncio.gather(*(one(i) for i in range(50)))
        assert order == list(range(50))

    run(main())


def test_rpm_bucket_timing():
    async def main():
        pool, ft = fake_pool(rpm=600)  # 10 per second, in per-second slices as providers enforce it
        times = await admit_times(pool, ft, 30)
        assert times[:10] == [0.0] * 10  # a full bucket at start: one second's share, not a minute's 600
        assert times[10:] == pytest.approx([(i + 1) / 10 for i in range(20)])  # then one per 0.1 s

    run(main())


def test_tpm_bucket_timing():
    async def main():
        pool, ft = fake_pool(tpm=1000)  # 1000/60 tokens per second
        times = await admit_times(pool, ft, 4, tokens=400)
        assert times[0] == times[1] == 0.0  # 800 of 1000
        assert times[2] == pytest.approx(200 / (1000 / 60))  # waits for the missing 200 = 12 s
        assert times[3] == pytest.approx(times[2] + 400 / (1000 / 60))  # then 400 more = 24 s

    run(main())


def test_request_larger_than_tpm_capacity_is_admitted_when_full_and_leaves_a_debt():
    async def main():
        pool, ft = fake_pool(tpm=1000)
        async with pool.slot(500):
            pass
        async with pool.slot(5000):  # waits until the bucket is full again (30 s), not forever
            admitted_big = ft.t
        async with pool.slot(100):  # the debt is paid back at the real rate
            admitted_next = ft.t
        assert admitted_big == pytest.approx(30.0)
        assert admitted_next - admitted_big == pytest.approx((4000 + 100) / (1000 / 60))

    run(asyncio.wait_for(main(), 5))


def test_rpm_and_concurrency_together():
    async def main():
        pool, ft = fake_pool(max_concurrency=2, rpm=2)  # 2 in flight, 1 request per 30 s, burst 1
        times = await admit_times(pool, ft, 4)
        assert times == pytest.approx([0.0, 30.0, 60.0, 90.0])

    run(main())


def test_settle_refunds_overestimated_tokens():
    async def main():
        pool, ft = fake_pool(tpm=1000)
        async with pool.slot(900) as slot:
            slot.settle(100)  # we only used 100: 800 come back
        async with pool.slot(800):
            assert ft.t == 0.0

    run(main())


def test_token_bucket_refill_is_continuous_and_capped():
    b = TokenBucket(60, now=0.0)
    b.tokens = 0
    b.refill(0.5)
    assert b.tokens == pytest.approx(0.5)
    assert b.delay(1) == pytest.approx(0.5)
    b.refill(1000)
    assert b.tokens == 60
    with pytest.raises(ValueError):
        TokenBucket(0, now=0.0)


def test_adaptive_slow_down_and_recovery():
    pool, ft = fake_pool(max_concurrency=16, recover_after=3, decrease_interval_s=0)
    assert pool.limit == 16
    for expected in (8, 4, 2, 1, 1):
        pool.record_rate_limited()
        assert pool.limit == expected
    for _ in range(3 * 5):
        pool.record_success()
    assert pool.limit == 6  # +1 per 3 successes
    for _ in range(100):
        pool.record_success()
    assert pool.limit == 16  # never above max_concurrency
    assert pool.rate_limited_count == 5


def test_burst_of_429s_halves_once_per_interval():
    pool, ft = fake_pool(max_concurrency=16, decrease_interval_s=1.0)
    for _ in range(16):  # the 429s of 16 requests already in flight
        pool.record_rate_limited()
    assert pool.limit == 8
    ft.t += 1.0
    pool.record_rate_limited()
    assert pool.limit == 4


def test_lowered_limit_holds_back_new_requests_and_recovery_wakes_them():
    async def main():
        pool = RequestPool(4, recover_after=1, decrease_interval_s=0)
        gate = asyncio.Event()
        started = []

        async def one(i):
            async with pool.slot():
                started.append(i)
                await gate.wait()

        first = [asyncio.ensure_future(one(i)) for i in range(4)]
        await asyncio.sleep(0)
        pool.record_rate_limited()  # limit 2, but 4 are already in flight
        later = [asyncio.ensure_future(one(i)) for i in range(4, 6)]
        await asyncio.sleep(0.01)
        assert started == [0, 1, 2, 3] and pool.waiting == 2
        pool.record_success()  # limit 3: still 4 in flight, nobody new
        pool.record_success()  # limit 4: still full
        await asyncio.sleep(0.01)
        assert pool.waiting == 2
        gate.set()
        await asyncio.gather(*first, *later)
        assert started == [0, 1, 2, 3, 4, 5]

    run(main())


def test_cancelled_waiters_leave_the_queue():
    async def main():
        pool = RequestPool(1)
        gate = asyncio.Event()
        done = []

        async def one(i):
            async with pool.slot():
                await gate.wait()
                done.append(i)

        holder = asyncio.ensure_future(one(0))
        await asyncio.sleep(0)
        waiters = [asyncio.ensure_future(one(i)) for i in range(1, 6)]
        await asyncio.sleep(0)
        waiters[0].cancel()  # the head of the queue
        waiters[2].cancel()  # one in the middle
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(holder, *waiters, return_exceptions=True)
        assert done == [0, 2, 4, 5]
        assert pool.in_flight == 0 and pool.waiting == 0
        async with pool.slot():  # still usable
            assert pool.in_flight == 1

    run(asyncio.wait_for(main(), 5))


def test_cancel_while_head_sleeps_for_the_bucket():
    async def main():
        pool = RequestPool(10, rpm=1)  # real clock: the second request would wait 60 s
        async with pool.slot():
            pass
        waiter = asyncio.ensure_future(pool.slot().__aenter__())
        await asyncio.sleep(0.01)
        assert pool.waiting == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert pool.waiting == 0 and pool.in_flight == 0

    run(asyncio.wait_for(main(), 5))


def test_exception_inside_slot_releases_it():
    async def main():
        pool = RequestPool(1)
        with pytest.raises(RuntimeError):
            async with pool.slot():
                raise RuntimeError("boom")
        assert pool.in_flight == 0
        async with pool.slot():
            pass

    run(main())


def test_validation():
    with pytest.raises(ValueError):
        RequestPool(0)
    with pytest.raises(ValueError):
        RequestPool(1, recover_after=0)


def _bench(pool, n):
    async def main():
        slot = pool.slot
        t0 = time.perf_counter()
        for _ in range(n):
            async with slot(100):
                pass
        return (time.perf_counter() - t0) / n

    return asyncio.run(main())


@pytest.mark.parametrize("kw", [{}, {"rpm": 10**9, "tpm": 10**12}])
def test_uncontended_slot_overhead_is_below_20_microseconds(kw):
    n = 20_000
    best = min(_bench(RequestPool(16, **kw), n) for _ in range(3))
    print(f"\nRequestPool.slot uncontended {kw or 'no rate limits'}: {best * 1e6:.2f} us per slot")
    assert best < 20e-6
