"""The local broker's port checks: a port being released is waited for, one that stays
taken is named."""

from __future__ import annotations

import socket
import threading

from shadowline.broker import port_free, wait_ports_free


def _listener() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, int(s.getsockname()[1])


def test_a_port_released_a_moment_later_is_waited_for() -> None:
    s, port = _listener()
    assert not port_free("127.0.0.1", port)
    threading.Timer(0.3, s.close).start()
    assert wait_ports_free("127.0.0.1", (port,), timeout=10.0) == []
    assert port_free("127.0.0.1", port)


def test_a_port_that_stays_taken_is_returned() -> None:
    s, port = _listener()
    try:
        assert wait_ports_free("127.0.0.1", (port,), timeout=0.3) == [port]
    finally:
        s.close()
