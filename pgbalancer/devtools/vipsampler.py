"""The VIP holder sampler's own process: who holds an address, every ``interval`` seconds.

Role: the tests' black-box witness of the VIP invariant (never two holders). It runs apart from the
test process so that the test's own threads (and their GIL) cannot delay a sample, and
``HolderSampler`` raises it to SCHED_FIFO where allowed (root), so on a CPU-starved VM it runs as
soon as a vCPU does: a gap between samples then means the hypervisor ran neither vCPU, not that
the guest was busy. It inherits one socket per member, each created inside that member's network
namespace, and asks it for the namespace's addresses with ioctl(SIOCGIFCONF) (no ``ip`` process).

Output, one line per sample on stdout: ``<time.monotonic()> <holder>,<holder>...`` (CLOCK_MONOTONIC
is shared by every process of the machine, so the parent compares these times with its own).
It never changes an address or a namespace; it stops on SIGTERM or when stdout closes.

Usage: python -m pgbalancer.devtools.vipsampler ADDRESS INTERVAL NAME=FD [NAME=FD ...]
"""

from __future__ import annotations

import socket
import sys
import time

from pgbalancer.devtools.netns import ipv4_addresses, sample_line


def parse_members(arguments: list[str]) -> dict[str, int]:
    """``NAME=FD`` arguments: the member names and their inherited socket descriptors."""
    members: dict[str, int] = {}
    for argument in arguments:
        name, separator, fd = argument.partition("=")
        if not name or not separator or not fd.isdigit():
            raise ValueError(f"{argument!r} is not NAME=FD")
        members[name] = int(fd)
    return members


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        sys.stderr.write(__doc__ or "")
        return 2
    address, interval = argv[0], float(argv[1])
    probes = {name: socket.socket(fileno=fd) for name, fd in parse_members(argv[2:]).items()}
    try:
        while True:
            started = time.monotonic()
            holders = [name for name, sock in probes.items() if address in ipv4_addresses(sock)]
            sys.stdout.write(sample_line(started, holders))
            sys.stdout.flush()
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except (BrokenPipeError, KeyboardInterrupt):
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
