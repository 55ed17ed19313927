"""The node lifts its soft open-files limit to the hard limit at startup (bench/idle_clients found a
node started with the 1,024 of a PAM session holding 1,013 clients and then refusing everyone)."""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator

import pytest

from pgbalancer.node import raise_open_files_limit


@pytest.fixture
def restored_limit() -> Iterator[tuple[int, int]]:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        yield before
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_soft_limit_is_raised_to_the_hard_limit(
    restored_limit: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, hard = restored_limit
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"needs a finite hard open-files limit above 256 (it is {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    with caplog.at_level(logging.INFO, logger="pgbalancer"):
        assert raise_open_files_limit() == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    assert f"from 256 to {hard}" in caplog.text


def test_nothing_to_do_when_soft_already_equals_hard(
    restored_limit: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, hard = restored_limit
    if hard == resource.RLIM_INFINITY:
        pytest.skip("needs a finite hard open-files limit")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with caplog.at_level(logging.INFO, logger="pgbalancer"):
        assert raise_open_files_limit() == hard
    assert "open-files" not in caplog.text
