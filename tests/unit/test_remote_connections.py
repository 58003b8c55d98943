"""RemoteModel's pooled connections against a loopback server that misbehaves on purpose:
a keep-alive connection reset under a request is sent again, a slow answer is not."""

from __future__ import annotations

import socket
import struct
import threading
import time

import orjson
import pytest

from shadowline.remote import RemoteModel

ANSWER = orjson.dumps(
    {"outputs": [{"name": "predict", "shape": [1], "datatype": "INT64", "data": [7]}]}
)


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(
        line.split(b":", 1)[1] for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    ))  # fmt: skip
    while len(body) < length:
        body += conn.recv(65536)
    return head


class Server:
    """Answers each connection's first request (keep-alive); what it does with a second
    request on the same connection is ``second``: "reset" (RST, no answer) or "answer"."""

    def __init__(self, second: str = "reset", delay_s: float = 0.0) -> None:
        self.second, self.delay_s = second, delay_s
        self.requests = 0
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        try:
            self._answer(conn)
        except OSError:
            pass  # the client gave up (a read timeout): nothing to answer to

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            served = 0
            while _read_request(conn):
                self.requests += 1
                if served and self.second == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return  # closed with RST: the client's request gets no answer
                time.sleep(self.delay_s)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(ANSWER)}\r\n\r\n".encode()
                    + ANSWER
                )
                served += 1

    def close(self) -> None:
        self.sock.close()


def test_a_keep_alive_connection_reset_under_a_request_is_sent_again() -> None:
    server = Server("reset")
    try:
        model = RemoteModel(f"v2+http://127.0.0.1:{server.port}/v2/models/m", timeout_s=5)
        assert model.predict_batch([{"features": [1.0]}]) == [7]
        # the pooled connection is reused; the server resets it under this request
        assert model.predict_batch([{"features": [1.0]}]) == [7]
        assert model.predict_batch([{"features": [1.0]}]) == [7]
    finally:
        server.close()
    # each reuse was reset and sent again on a new connection: no answer was lost,
    # and no call was sent more than twice
    assert server.connections == 3 and server.requests == 5


def test_a_slow_answer_is_not_sent_again() -> None:
    server = Server("answer", delay_s=1.0)
    try:
        model = RemoteModel(f"v2+http://127.0.0.1:{server.port}/v2/models/m", timeout_s=0.3)
        with pytest.raises(Exception, match="(?i)timed? ?out"):
            model.predict_batch([{"features": [1.0]}])
        # a read timeout is the model's: recorded as such, never a second call
        assert server.requests == 1
    finally:
        server.close()
