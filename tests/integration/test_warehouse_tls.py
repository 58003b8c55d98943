"""A ClickHouse server behind TLS that asks for a client certificate: the
``warehouse.ca_cert`` / ``client_cert`` / ``client_key`` settings against a real TLS
handshake. No ClickHouse server binary can be had on these machines, so the server
is the real engine (chDB) behind the embedded owner's ClickHouse HTTP endpoint, with a
TLS terminator in front of it that requires a certificate signed by its CA, as a
ClickHouse server with ``<verificationMode>strict</verificationMode>`` does."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowline.config import parse_config
from shadowline.errors import WarehouseError
from shadowline.warehouse import Warehouse
from tests import tls
from tests.conftest import free_port
from tests.integration.test_warehouse_endpoint import comparison

pytestmark = pytest.mark.integration


def _terminator(certs: Path, upstream: int) -> tuple[int, asyncio.AbstractEventLoop]:
    """A TLS server on a free loopback port relaying to ``upstream`` in plain HTTP,
    refusing any client without a certificate from ``ca.pem``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs / "ca.pem"))
    context.load_cert_chain(certs / "server.crt", certs / "server.key")
    context.verify_mode = ssl.CERT_REQUIRED
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def main() -> None:
        await asyncio.start_server(relay, "127.0.0.1", port, ssl=context)
        ready.set()

    def run() -> None:
        loop.run_until_complete(main())
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    assert ready.wait(10)
    return port, loop


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[tuple[Path, int, Path]]:
    certs = tmp_path_factory.mktemp("ch-tls")
    tls.make_certificates(certs)
    other = tmp_path_factory.mktemp("other-ca")
    tls.make_certificates(other, ca="other-ca")  # a CA the server's certificate is not from
    config = parse_config(
        {"warehouse": {"path": str(certs / "wh"), "port": free_port(), "http_writable": True}},
        env={},
    )
    owner = Warehouse.open_owner(config)
    owner.insert_comparisons([comparison(f"r{i}", experiment="tls") for i in range(7)])
    http = owner.serve_http()
    port, loop = _terminator(certs, config.warehouse.port)
    yield certs, port, other / "other-ca.pem"
    loop.call_soon_threadsafe(loop.stop)
    http.shutdown()
    owner.close()


def _server_config(port: int, **tls_settings: str):
    return parse_config(
        {"warehouse": {"backend": "clickhouse", "url": f"https://127.0.0.1:{port}/",
                       **tls_settings}},
        env={},
    )  # fmt: skip


def test_the_client_certificate_opens_a_server_that_asks_for_one(tls_server):
    certs, port, _ = tls_server
    config = _server_config(
        port, ca_cert=str(certs / "ca.pem"), client_cert=str(certs / "client.crt"),
        client_key=str(certs / "client.key"),
    )  # fmt: skip
    reader = Warehouse.open_reader(config)
    try:
        got = reader.query(
            "SELECT count() AS n, uniqExact(request_id) AS ids FROM comparisons "
            "WHERE experiment = {e:String}",
            {"e": "tls"},
        )
    finally:
        reader.close()
    assert got == [{"n": 7, "ids": 7}]


def test_without_a_client_certificate_the_server_refuses(tls_server):
    certs, port, _ = tls_server
    config = _server_config(port, ca_cert=str(certs / "ca.pem"))
    # the server ends the handshake (TLS 1.3: after the client's half of it, so the
    # client sees the handshake fail or the connection closed before any answer)
    with pytest.raises(WarehouseError, match="SSL|Remote end closed connection"):
        reader = Warehouse.open_reader(config)
        reader.query("SELECT 1 AS one")


def test_a_server_certificate_from_another_ca_is_refused(tls_server):
    certs, port, other_ca = tls_server
    config = _server_config(
        port, ca_cert=str(other_ca), client_cert=str(certs / "client.crt"),
        client_key=str(certs / "client.key"),
    )  # fmt: skip
    with pytest.raises(WarehouseError, match="CERTIFICATE_VERIFY_FAILED"):
        reader = Warehouse.open_reader(config)
        reader.query("SELECT 1 AS one")
