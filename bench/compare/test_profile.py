"""Unit tests of the py-spy collapsed-stack summary. Never runs py-spy."""

from __future__ import annotations

import pytest

from compare.profile import parse_collapsed, render_profile, source_file, summarize_profile

RAW = """run (node.py:10);serve (server.py:5);relay (relay.py:7);recv (socket.py:1) 6
run (node.py:10);serve (server.py:5);relay (relay.py:7) 3
run (node.py:10);idle (trio.py:2) 1
not a stack line
"""


def test_self_and_inclusive_shares() -> None:
    summary = summarize_profile(parse_collapsed(RAW))
    assert summary.samples == 10
    top_self = summary.self_time[0]
    assert (top_self.frame, top_self.samples) == ("recv (socket.py:1)", 6)
    inclusive = {f.frame: f.share for f in summary.inclusive}
    assert inclusive["run (node.py:10)"] == pytest.approx(1.0)
    assert inclusive["relay (relay.py:7)"] == pytest.approx(0.9)
    by_file = {f.frame: f.samples for f in summary.self_by_file}
    assert by_file == {"socket.py": 6, "relay.py": 3, "trio.py": 1}


def test_source_file_of_frames() -> None:
    assert source_file("_nonblocking_helper (trio/_socket.py:1050)") == "trio/_socket.py"
    assert source_file("<native>") == "<native>"


def test_recursive_frame_counts_once_per_sample() -> None:
    summary = summarize_profile(parse_collapsed("a;b;a 4\n"))
    assert {f.frame: f.samples for f in summary.inclusive} == {"a": 4, "b": 4}


def test_empty_profile_renders() -> None:
    summary = summarize_profile([])
    assert summary.samples == 0
    assert "0 samples" in render_profile(summary, "empty")
