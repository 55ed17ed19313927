"""Pure reading of a py-spy profile in its `--format raw` form (collapsed stacks: `f1;f2;f3 COUNT` per
line, outermost frame first) into the frames where the samples were spent.

Never runs py-spy or reads a file: the caller passes the text in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FrameShare:
    frame: str
    samples: int
    share: float  # of all samples, 0..1


@dataclass(frozen=True)
class ProfileSummary:
    samples: int
    self_time: tuple[FrameShare, ...]  # samples whose innermost frame is this one
    inclusive: tuple[FrameShare, ...]  # samples with this frame anywhere on the stack
    self_by_file: tuple[FrameShare, ...]  # self time summed per source file


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def source_file(frame: str) -> str:
    """`recv (trio/_socket.py:1050)` -> `trio/_socket.py`; a frame without a location stays as is."""
    _, paren, location = frame.rpartition(" (")
    return location.rstrip(")").rpartition(":")[0] or frame if paren else frame


def _shares(counter: Counter[str], total: int, top: int) -> tuple[FrameShare, ...]:
    return tuple(FrameShare(frame, n, n / total) for frame, n in counter.most_common(top))


def summarize_profile(stacks: Sequence[tuple[list[str], int]], top: int = 15) -> ProfileSummary:
    total = sum(count for _, count in stacks)
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    for frames, count in stacks:
        if frames:
            own[frames[-1]] += count
            by_file[source_file(frames[-1])] += count
        for frame in set(frames):  # a recursive frame counts once per sample
            anywhere[frame] += count
    if not total:
        return ProfileSummary(0, (), (), ())
    return ProfileSummary(
        total, _shares(own, total, top), _shares(anywhere, total, top), _shares(by_file, total, top)
    )


def render_profile(summary: ProfileSummary, title: str) -> str:
    lines = [f"### {title}", "", f"{summary.samples:,} samples.", ""]
    tables = (
        ("self time by source file", summary.self_by_file),
        ("self time (innermost frame)", summary.self_time),
        ("inclusive (frame anywhere on the stack)", summary.inclusive),
    )
    for heading, rows in tables:
        lines += [f"| {heading} | samples | share |", "|---|---:|---:|"]
        lines += [f"| `{r.frame}` | {r.samples:,} | {r.share:.1%} |" for r in rows]
        lines.append("")
    return "\n".join(lines)
