"""A server connection that cannot be opened: the error says which backend, in which role, failed."""

from __future__ import annotations

import pytest

from pgbalancer.devtools import free_tcp_port
from pgbalancer.proxy.backend import (
    BackendAddress,
    BackendUnavailable,
    ServerCredentials,
    connect_failure_message,
    open_server_connection,
)


async def refused(node_id: int) -> BackendUnavailable:
    address = BackendAddress(node_id, "127.0.0.1", free_tcp_port())  # nothing listens there
    with pytest.raises(BackendUnavailable) as excinfo:
        await open_server_connection(address, "db", ServerCredentials("app"), timeout=5.0, now=0.0)
    assert excinfo.value.address == address
    return excinfo.value


async def test_a_standby_that_refuses_is_named_as_a_standby() -> None:
    exc = await refused(2)
    message = connect_failure_message(exc, primary_id=0)
    assert message.startswith("pgbalancer could not connect to a standby: backend 2 (127.0.0.1:")
    assert "primary" not in message


async def test_the_primary_that_refuses_is_named_as_the_primary() -> None:
    exc = await refused(0)
    assert connect_failure_message(exc, primary_id=0).startswith(
        "pgbalancer could not connect to the primary: backend 0 (127.0.0.1:"
    )


def test_no_backend_tried_means_no_primary_was_up() -> None:
    exc = BackendUnavailable("no primary is up (cluster view epoch 3)")
    assert connect_failure_message(exc, primary_id=None) == (
        "pgbalancer could not connect to the primary: no primary is up (cluster view epoch 3)"
    )
