"""The local broker's start-up gate: a port counts as listening only when something
accepts on it, never when a client reached itself."""

from __future__ import annotations

import socket

from shadowline.broker import listening


def test_a_listening_port_is_seen_and_a_closed_one_is_not():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert listening("127.0.0.1", port)
    assert not listening("127.0.0.1", port)


def test_many_probes_of_a_closed_port_never_leave_it_taken():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for _ in range(300):
        assert not listening("127.0.0.1", port, timeout=0.05)
    with socket.socket() as s:  # still bindable: no probe kept a connection to itself
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_a_probe_that_reached_itself_leaves_the_port_bindable_at_once():
    # What happened once by chance (a probe handed the probed port as its own source
    # port), forced: the probe connects to itself. The broker must still bind it now, not
    # after TIME_WAIT's minute (its listener sets SO_REUSEADDR, as this one does).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert not listening("127.0.0.1", port, source_port=port)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
