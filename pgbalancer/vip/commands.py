"""The VIP commands as argument vectors, pure: if_up_cmd, if_down_cmd and arping_cmd templates expanded.

Templates are pgpool-style command lines (their defaults are in pgbalancer.config) with
placeholders: ``$_IP_$`` is the virtual IP (delegate_ip) and ``$_IF_$`` the interface
(delegate_ip_interface). They are split like a POSIX
shell would split them (quotes work) and then run directly, without a shell, so a placeholder
value can never inject a command. To use shell features, write ``sh -c '...'`` yourself.

It must never: run anything, read files or the clock.
"""

from __future__ import annotations

import itertools
import shlex
from dataclasses import dataclass
from typing import Final

IP_PLACEHOLDER: Final = "$_IP_$"
IF_PLACEHOLDER: Final = "$_IF_$"


class CommandTemplateError(ValueError):
    """A template that cannot become a command; the message says why."""


def split_template(template: str) -> list[str]:
    """The template's words, placeholders still in place; CommandTemplateError when it is unusable."""
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise CommandTemplateError(f"cannot be split into words ({exc})") from None
    if not words:
        raise CommandTemplateError("is empty")
    return words


def expand(template: str, ip: str, interface: str) -> tuple[str, ...]:
    """The argument vector of ``template`` with the placeholders replaced."""
    return tuple(
        word.replace(IP_PLACEHOLDER, ip).replace(IF_PLACEHOLDER, interface)
        for word in split_template(template)
    )


@dataclass(frozen=True, slots=True)
class VipCommands:
    """The three commands for one VIP on one interface. ``arping`` is () when announcing is off."""

    ip: str
    interface: str
    up: tuple[str, ...]
    down: tuple[str, ...]
    arping: tuple[str, ...]

    @classmethod
    def from_templates(cls, ip: str, interface: str, up: str, down: str, arping: str) -> VipCommands:
        announce = expand(arping, ip, interface) if arping.strip() else ()
        return cls(ip, interface, expand(up, ip, interface), expand(down, ip, interface), announce)


def listed_on(ip_addr_output: str, ip: str) -> bool:
    """Whether ``ip -o addr show dev IF`` output lists ``ip`` (as ``inet IP/len`` or ``inet6 IP/len``)."""
    for line in ip_addr_output.splitlines():
        words = line.split()
        for family, address in itertools.pairwise(words):
            if family in ("inet", "inet6") and address.split("/", 1)[0] == ip:
                return True
    return False
