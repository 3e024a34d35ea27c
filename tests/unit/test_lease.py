"""SendLease (lease.py): what a fill's requests are admitted by, on a fake clock."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from dbt_pg_llm.errors import ErrorKind, ModelError
from dbt_pg_llm.models.lease import SendLease, admit_send, sending_for


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_claim_starts_the_lease_only_when_nothing_else_is_held():
    clock = Clock()
    lease = SendLease(10, hold_s=5, clock=clock)
    started = lease.claiming()
    assert started == 100.0
    lease.claimed({"a"}, started)
    assert asyncio.run(lease.admit(frozenset({"a"}))) is None
    clock.now = 105.0
    assert lease.claiming() is None  # "a" is older than this claim: its lease bounds both


def test_an_expired_lease_holds_requests_until_a_renewal_which_drops_lost_keys():
    clock = Clock()
    lease = SendLease(10, hold_s=30, clock=clock)
    lease.claimed({"a", "b"}, lease.claiming())
    clock.now = 111.0  # paused past the lease

    async def scenario():
        a = asyncio.ensure_future(lease.admit(frozenset({"a"})))
        b = asyncio.ensure_future(lease.admit(frozenset({"b"})))
        await asyncio.sleep(0.05)
        assert not a.done() and not b.done()  # held: the claims may have been taken over
        # the heartbeat (another thread) renews: "b" was taken over meanwhile
        renewer = threading.Thread(target=lambda: lease.renewed(111.0, {"a", "b"}, {"a"}))
        renewer.start()
        renewer.join()
        return await a, await b

    sent_a, sent_b = asyncio.run(scenario())
    assert sent_a is None
    assert sent_b == "another run took over its claim"
    assert lease.held() == {"a"}
    lease.claimed({"b"}, None)  # taken back later: ours again
    assert asyncio.run(lease.admit(frozenset({"b"}))) is None


def test_a_renewal_that_began_before_a_pause_does_not_extend_the_lease_past_it():
    lease = SendLease(10, hold_s=0.1)  # the real clock: the request is held 0.1 s, then dropped
    now = time.monotonic()
    lease.claimed({"a"}, now - 50)
    lease.renewed(now - 20, {"a"}, {"a"})  # its statement started 20 s ago (then a pause): valid until 10 s ago
    assert asyncio.run(lease.admit(frozenset({"a"}))).startswith("its claim could not be confirmed")


def test_revoke_drops_everything_not_sent_and_admit_send_says_claim_lost():
    lease = SendLease(10, hold_s=5)
    lease.claimed({"a"}, lease.claiming())
    lease.revoke()

    async def call():
        await admit_send("m")

    with pytest.raises(ModelError) as err:
        asyncio.run(sending_for(lease, ["a", "b"], call()))
    assert err.value.kind is ErrorKind.CLAIM_LOST and not err.value.recoverable
    assert lease.dropped == 1
    asyncio.run(call())  # outside a lease's context: not checked
