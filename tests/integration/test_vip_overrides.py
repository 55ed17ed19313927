"""if_up_cmd / if_down_cmd / arping_cmd overrides, parsed from a config and really executed.

The VipExecutor runs what the config says (here ``sh -c`` lines that append to a file), with
``$_IP_$`` and ``$_IF_$`` expanded into separate arguments and no shell of pgbalancer's own around
them, so the file shows exactly which command ran, in which order, with which arguments. Needs no
root: nothing touches an interface.
"""

from __future__ import annotations

from pathlib import Path

from pgbalancer.config import Config, parse_config_text
from pgbalancer.vip.executor import VipExecutor
from pgbalancer.vip.manager import vip_commands

VIP = "192.0.2.10"  # TEST-NET-1; never added anywhere: the commands only write a file
INTERFACE = "wdtest0"
BASE = f"auth_type = trust\nbackend_hostname0 = db\ndelegate_ip = {VIP}\n"


def _config(**templates: str) -> Config:
    text = BASE + f"delegate_ip_interface = {INTERFACE}\n"
    for key, template in templates.items():
        text += f"{key} = '{template}'\n"
    return parse_config_text(text)


def _appender(record: Path, word: str) -> str:
    """A command line that appends ``word IP IF`` to ``record`` (the placeholders become $0 and $1)."""
    return f'sh -c "echo {word} $0 $1 >> {record}" $_IP_$ $_IF_$'


def _armed(executor: VipExecutor) -> bool:
    return executor.guarded  # a call, so the checker does not carry one answer over the next await


def _lines(record: Path) -> list[str]:
    return record.read_text().splitlines() if record.exists() else []


async def test_overridden_commands_run_with_the_placeholders_expanded(tmp_path: Path) -> None:
    record = tmp_path / "vip.log"
    config = _config(
        if_up_cmd=_appender(record, "up"),
        if_down_cmd=_appender(record, "down"),
        arping_cmd=_appender(record, "arping"),
    )
    executor = VipExecutor(vip_commands(config))

    assert await executor.acquire()
    assert _armed(executor)  # the guard process waits to run if_down_cmd
    assert _lines(record) == [f"up {VIP} {INTERFACE}"]
    assert await executor.announce()
    assert await executor.announce()
    assert _lines(record)[1:] == [f"arping {VIP} {INTERFACE}"] * 2

    assert await executor.release()  # the guard runs if_down_cmd, and release waits for it
    assert not _armed(executor)
    assert _lines(record) == [
        f"up {VIP} {INTERFACE}",
        f"arping {VIP} {INTERFACE}",
        f"arping {VIP} {INTERFACE}",
        f"down {VIP} {INTERFACE}",
    ]
    # a release with no guard armed (say, after a restart) runs if_down_cmd directly
    assert await executor.release()
    assert _lines(record)[-1] == f"down {VIP} {INTERFACE}" and len(_lines(record)) == 5


async def test_a_failing_override_is_judged_by_its_effect_and_an_empty_arping_sends_nothing(
    tmp_path: Path,
) -> None:
    record = tmp_path / "vip.log"
    config = _config(if_up_cmd='sh -c "exit 3"', if_down_cmd=_appender(record, "down"), arping_cmd="")
    executor = VipExecutor(vip_commands(config))
    # if_up_cmd failed and the interface (which does not exist) does not show the address: not acquired
    assert not await executor.acquire()
    assert await executor.announce()  # arping_cmd = '': nothing to run, nothing to fail
    assert _lines(record) == []
    # the guard was armed before if_up_cmd ran, so releasing still runs if_down_cmd
    assert await executor.release()
    assert _lines(record) == [f"down {VIP} {INTERFACE}"]


async def test_placeholder_values_are_arguments_never_shell_text(tmp_path: Path) -> None:
    """delegate_ip_interface is free text: a value with shell syntax in it reaches the command as one
    argument and runs nothing (the templates are split once and run without a shell)."""
    record = tmp_path / "vip.log"
    marker = tmp_path / "injected"
    config = parse_config_text(
        BASE + f"delegate_ip_interface = 'eth0;touch {marker}'\n"
        f"if_up_cmd = '{_appender(record, 'up')}'\nif_down_cmd = '{_appender(record, 'down')}'\n"
    )
    executor = VipExecutor(vip_commands(config))
    assert await executor.acquire()
    assert _lines(record) == [f"up {VIP} eth0;touch {marker}"]
    assert await executor.release()
    assert _lines(record)[-1] == f"down {VIP} eth0;touch {marker}"
    assert not marker.exists()
