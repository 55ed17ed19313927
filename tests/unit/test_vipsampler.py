"""The VIP sampler process' command line and sample lines (pure parts; no namespace, no process)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.devtools.netns import parse_sample_line, sample_line
from pgbalancer.devtools.vipsampler import main, parse_members

NAMES = st.lists(st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True), unique=True, max_size=4)


@given(at=st.floats(min_value=0, max_value=1e9, allow_nan=False), holders=NAMES)
def test_a_sample_line_reads_back_as_written(at: float, holders: list[str]) -> None:
    read_at, read_holders = parse_sample_line(sample_line(at, holders))
    assert read_at == pytest.approx(at, abs=1e-6)
    assert read_holders == frozenset(holders)


def test_members_are_name_equals_descriptor() -> None:
    assert parse_members(["n1=7", "n2=12"]) == {"n1": 7, "n2": 12}
    for bad in ("n1", "=7", "n1=", "n1=x"):
        with pytest.raises(ValueError, match="is not NAME=FD"):
            parse_members([bad])


def test_too_few_arguments_print_the_usage_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["10.0.0.1"]) == 2
    assert "Usage: python -m pgbalancer.devtools.vipsampler" in capsys.readouterr().err
