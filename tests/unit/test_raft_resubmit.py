"""RaftClusterStore._call's resubmission loop, with a fake submit in place of pysyncobj.

Only the loop is under test: which refusals are resubmitted until the write timeout (pysyncobj's
"never appended" ones), which are reported at once, and what a caller is told when no answer
came. The real-Raft behaviour is in tests/integration/test_consensus_raft.py. The clock is trio's
MockClock (autojump), so the write timeouts take no real time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from pysyncobj import FAIL_REASON

from consensus import NoQuorumError
from consensus.raft import RaftClusterStore, RaftTimings

Callback = Callable[[Any, int], None]


class FakeSubmit:
    """Answers each submission with the next error of ``errors`` (None: never answers)."""

    def __init__(self, *errors: int | None) -> None:
        self.errors = list(errors)
        self.submitted: list[float] = []

    def __call__(self, callback: Callback) -> None:
        self.submitted.append(trio.current_time())
        error = self.errors.pop(0) if len(self.errors) > 1 else self.errors[0]
        if error is not None:
            callback("done" if error == FAIL_REASON.SUCCESS else None, error)


def running_store(tmp_path: Path, write_timeout: float) -> RaftClusterStore:
    store = RaftClusterStore(
        "127.0.0.1:1",
        ["127.0.0.1:2", "127.0.0.1:3"],
        secret="s",
        data_dir=tmp_path,
        lease=1.0,
        timings=RaftTimings(write_timeout=write_timeout),
    )
    store._token = trio.lowlevel.current_trio_token()  # what run() sets; no SyncObj is started
    store._obj = object()
    return store


@pytest.mark.parametrize(
    "refusal",
    [FAIL_REASON.MISSING_LEADER, FAIL_REASON.QUEUE_FULL, FAIL_REASON.NOT_LEADER, FAIL_REASON.DISCARDED],
)
async def test_a_command_refused_before_it_was_logged_is_resubmitted_until_it_commits(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, refusal: int
) -> None:
    store = running_store(tmp_path, write_timeout=3.0)
    submit = FakeSubmit(refusal, refusal, refusal, FAIL_REASON.SUCCESS)
    assert await store._call(submit, "a vote") == "done"
    assert len(submit.submitted) == 4
    assert submit.submitted[-1] - submit.submitted[0] < 3.0


async def test_an_election_longer_than_the_write_timeout_is_reported_as_not_applied(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = running_store(tmp_path, write_timeout=2.0)
    submit = FakeSubmit(FAIL_REASON.MISSING_LEADER)
    with pytest.raises(NoQuorumError) as caught:
        await store._call(submit, "removing member 127.0.0.1:3")
    message = str(caught.value)
    assert "could not commit removing member 127.0.0.1:3 within 2s: missing leader" in message
    assert "it was not applied: retry" in message
    assert len(submit.submitted) > 10  # resubmitted all along, not once
    assert submit.submitted[-1] - submit.submitted[0] <= 2.0


@pytest.mark.parametrize(
    ("refusal", "reason"),
    [
        (FAIL_REASON.LEADER_CHANGED, "leader changed"),  # the old leader may have logged it
        (FAIL_REASON.UNKNOWN_OUTCOME, "unknown outcome"),
        (FAIL_REASON.REQUEST_DENIED, "request denied"),
    ],
)
async def test_a_command_that_may_have_been_logged_is_never_resubmitted(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, refusal: int, reason: str
) -> None:
    store = running_store(tmp_path, write_timeout=3.0)
    submit = FakeSubmit(refusal, FAIL_REASON.SUCCESS)
    with pytest.raises(NoQuorumError, match=f"could not commit a vote: {reason}; retry"):
        await store._call(submit, "a vote")
    assert len(submit.submitted) == 1


async def test_a_command_not_confirmed_in_time_is_said_to_maybe_apply_later(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = running_store(tmp_path, write_timeout=3.0)
    submit = FakeSubmit(None)  # forwarded to a leader that never answered: it may still commit
    with pytest.raises(NoQuorumError) as caught:
        await store._call(submit, "removing member 127.0.0.1:3")
    message = str(caught.value)
    assert "removing member 127.0.0.1:3 was not confirmed within 3s" in message
    assert "it may still be applied: check GET /api/v1/watchdog/info" in message
    assert len(submit.submitted) == 1
