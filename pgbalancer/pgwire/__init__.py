"""The PostgreSQL v3 wire protocol as pure, sans-I/O code.

Modules, by role:

* :mod:`~pgbalancer.pgwire.errors`: SQLSTATEs, ProtocolError, ErrorResponse/NoticeResponse.
* :mod:`~pgbalancer.pgwire.framing`: bytes in, whole messages and startup packets out.
* :mod:`~pgbalancer.pgwire.messages`: building and parsing individual messages.
* :mod:`~pgbalancer.pgwire.auth`: MD5 and SCRAM-SHA-256 (server and client side, pass-through).
* :mod:`~pgbalancer.pgwire.scan`: header-only scanning of relayed streams (the hot path).

Nothing in this package does I/O, reads a clock, draws randomness, or imports trio: the proxy
shell feeds it bytes and sends what it returns. Import names from the submodules; this package
re-exports only the few every caller needs.
"""

from pgbalancer.pgwire.errors import ProtocolError, SqlState, error_response
from pgbalancer.pgwire.framing import (
    CLOSED,
    NEED_DATA,
    Closed,
    Message,
    MessageReader,
    NeedData,
    StartupReader,
)

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "Closed",
    "Message",
    "MessageReader",
    "NeedData",
    "ProtocolError",
    "SqlState",
    "StartupReader",
    "error_response",
]
