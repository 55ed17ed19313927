"""tests/hoststeal.py: the steal-time line a failed attempt of a rerun test reports."""

from tests.hoststeal import CpuTimes, parse_cpu_times, steal_report

STAT = """cpu  3884997 598920 1103676 3733120 78347 0 149514 824295 12 0
cpu0 1802446 276604 529282 2056359 39045 0 70391 421815 0 0
intr 120351678 0 0
"""


def test_the_aggregate_cpu_line_is_read_guest_time_not_counted_twice() -> None:
    assert parse_cpu_times(STAT) == CpuTimes(
        total=3884997 + 598920 + 1103676 + 3733120 + 78347 + 0 + 149514 + 824295, steal=824295
    )
    assert parse_cpu_times("cpu  10 0 5 85\n") == CpuTimes(total=100, steal=0)  # a kernel without steal
    assert parse_cpu_times("intr 1 2\n") is None


def test_the_report_says_whether_the_host_starved_the_vm() -> None:
    starved = steal_report(CpuTimes(1000, 100), CpuTimes(1800, 300), ticks_per_second=100)
    assert starved == (
        "host steal time over this attempt: 25.0% of CPU time (2.0 of 8.0 CPU-seconds): "
        "the host was starving this VM"
    )
    quiet = steal_report(CpuTimes(1000, 100), CpuTimes(1800, 101), ticks_per_second=100)
    assert "0.1% of CPU time" in quiet and "was not starving" in quiet
    assert "unknown" in steal_report(None, CpuTimes(1, 1))
    assert "no CPU time elapsed" in steal_report(CpuTimes(5, 1), CpuTimes(5, 1))
