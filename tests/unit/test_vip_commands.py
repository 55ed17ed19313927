"""VIP command templates (pgbalancer.vip.commands) and their config keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.config import ConfigError, parse_config_text
from pgbalancer.vip.commands import CommandTemplateError, VipCommands, expand, listed_on
from pgbalancer.vip.manager import vip_commands, vip_timing

BASE = "auth_type = trust\nbackend_hostname0 = db1\ndelegate_ip = 192.0.2.10\ndelegate_ip_interface = eth0\n"


def test_the_defaults_add_and_remove_a_host_address_and_send_one_gratuitous_arp() -> None:
    commands = vip_commands(parse_config_text(BASE))
    assert commands.up == ("ip", "addr", "add", "192.0.2.10/32", "dev", "eth0")
    assert commands.down == ("ip", "addr", "del", "192.0.2.10/32", "dev", "eth0")
    assert commands.arping == ("arping", "-U", "-c", "1", "-I", "eth0", "192.0.2.10")


def test_overrides_are_split_like_a_shell_and_never_run_through_one() -> None:
    text = BASE + "if_up_cmd = 'sudo /sbin/ip addr add $_IP_$/24 dev $_IF_$ label \"$_IF_$:0\"'\n"
    text += "arping_cmd = ''\n"
    commands = vip_commands(parse_config_text(text))
    assert commands.up == (
        "sudo",
        "/sbin/ip",
        "addr",
        "add",
        "192.0.2.10/24",
        "dev",
        "eth0",
        "label",
        "eth0:0",
    )
    assert commands.arping == ()


@pytest.mark.parametrize(
    ("line", "fragment"),
    [("if_up_cmd = ''", "if_up_cmd"), ("if_down_cmd = 'ip \"addr'", "if_down_cmd")],
)
def test_unusable_templates_are_refused_naming_the_key(line: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(BASE + line + "\n")
    assert fragment in str(caught.value)


@given(st.text(max_size=20))
def test_a_placeholder_value_stays_one_word(value: str) -> None:
    """Whatever the interface name holds, it cannot become extra arguments or a command."""
    argv = expand("ip addr add $_IP_$ dev $_IF_$", "192.0.2.1", value)
    assert argv[:4] == ("ip", "addr", "add", "192.0.2.1") and argv[5] == value and len(argv) == 6


def test_a_broken_template_raises_a_clear_error() -> None:
    with pytest.raises(CommandTemplateError, match="split"):
        VipCommands.from_templates("192.0.2.1", "eth0", "ip 'x", "ip", "")


def test_listed_on_reads_ip_o_addr_output() -> None:
    output = (
        "2: eth0    inet 10.0.0.5/24 brd 10.0.0.255 scope global eth0\\       valid_lft forever\n"
        "2: eth0    inet 10.0.0.100/32 scope global eth0\\       valid_lft forever\n"
        "2: eth0    inet6 fe80::1/64 scope link \\       valid_lft forever\n"
    )
    assert listed_on(output, "10.0.0.100")
    assert listed_on(output, "fe80::1")
    assert not listed_on(output, "10.0.0.10")


def test_the_acquire_delay_never_undercuts_the_leader_fallback_timeout() -> None:
    config = parse_config_text(BASE + "delegate_ip_arp_count = 5\n")
    timing = vip_timing(config, leader_fallback_timeout=1.0, acquire_delay=0.2)
    assert timing.acquire_delay > 1.0 + 0.05
    assert timing.announce_count == 5
    assert vip_timing(config, leader_fallback_timeout=1.0, acquire_delay=3.0).acquire_delay == 3.0
