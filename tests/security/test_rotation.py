"""Certificate rotation: files re-read when they change (paced by an injected clock), invalid material refused with
the old kept, and contexts that give new connections the new certificate while established ones carry on."""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from connectivity.security.material import MaterialInput, MaterialSource
from connectivity.security.rotation import CertificateWatcher, RotationEvent
from connectivity.security.tls import MTLS, PeerHandshake
from connectivity.testing import FakeClock
from connectivity.testing.server import serve
from connectivity.transports.http import HTTPTransport
from connectivity.transports.peer_identity import PeerIdentityTransport

SERVER_ID = "spiffe://example.test/ns/tests/sa/upstream"
CLIENT_ID = "spiffe://example.test/ns/tests/sa/client"
DAY = datetime.timedelta(days=1)


class Counting:
    """An ASGI app answering 200 and counting the requests that reached it."""

    def __init__(self) -> None:
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.requests += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _watcher(
    dev_pki: Any, leaf: Any, clock: FakeClock, events: list[RotationEvent], interval: float = 10.0
) -> Any:
    source = MaterialSource(
        MaterialInput("MTLS.cert", path=leaf.cert),
        MaterialInput("MTLS.key", path=leaf.key),
        ((None, MaterialInput("MTLS.ca", path=dev_pki.ca())),),
    )
    return CertificateWatcher(source, check_interval=interval, clock=clock, listener=events.append)


def test_files_are_looked_at_at_most_every_check_interval(dev_pki: Any) -> None:
    clock, events = FakeClock(epoch=time.time()), []
    first = dev_pki.leaf("svc", CLIENT_ID)
    watcher = _watcher(dev_pki, first, clock, events)
    second = dev_pki.leaf("svc", CLIENT_ID)  # rewrites svc.pem and svc.key
    assert watcher.poll().leaf.serial_number == first.serial
    clock.advance(9.9)
    assert watcher.poll().generation == 1  # not due yet: the files were not even looked at
    assert watcher.status().checked_at is None
    clock.advance(0.2)
    material = watcher.poll()
    assert (material.generation, material.leaf.serial_number) == (2, second.serial)
    status = watcher.status()
    assert status.serial == second.serial
    assert status.spiffe_id == CLIENT_ID
    assert status.checked_at == pytest.approx(clock.time())
    assert status.loaded_at == pytest.approx(clock.time())
    assert [event.kind for event in events] == ["loaded", "rotated"]
    assert events[1].status.generation == 2


def _break(kind: str, dev_pki: Any, leaf: Any) -> str:
    """Replace the material with something invalid; returns the file the error must name."""
    if kind == "key-mismatch":  # a new certificate whose key never arrives
        other = dev_pki.leaf("other", CLIENT_ID)
        shutil.copyfile(other.cert, leaf.cert)
        return leaf.key
    if kind == "expired":
        now = datetime.datetime.now(datetime.timezone.utc)
        dev_pki.leaf("svc", CLIENT_ID, not_before=now - 3 * DAY, valid_for=DAY)
        return leaf.cert
    if kind == "garbage":
        with open(leaf.cert, "w") as file:
            file.write("-----BEGIN CERTIFICATE-----\ntruncated")
        return leaf.cert
    os.remove(leaf.key)  # "missing"
    return leaf.key


@pytest.mark.parametrize("kind", ["key-mismatch", "expired", "garbage", "missing"])
def test_invalid_new_material_keeps_the_old_and_is_reported(
    dev_pki: Any, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock, events = FakeClock(epoch=time.time()), []
    leaf = dev_pki.leaf("svc", CLIENT_ID)
    with open(leaf.key) as file:
        key_lines = [line for line in file.read().splitlines() if "-----" not in line]
    watcher = _watcher(dev_pki, leaf, clock, events)
    named = _break(kind, dev_pki, leaf)
    clock.advance(10)
    with caplog.at_level(logging.DEBUG, logger="connectivity.security"):
        material = watcher.poll()
    assert (material.generation, material.leaf.serial_number) == (1, leaf.serial)  # the old material stays
    status = watcher.status()
    assert status.serial == leaf.serial
    assert status.last_error is not None
    assert named in status.last_error
    assert status.last_error_at == pytest.approx(clock.time())
    assert [event.kind for event in events] == ["loaded", "rejected"]
    assert events[1].error is not None
    assert named in str(events[1].error)
    (record,) = [r for r in caplog.records if r.name == "connectivity.security" and r.levelno == logging.ERROR]
    assert named in record.getMessage()
    assert not any(line in record.getMessage() for line in key_lines)
    assert "PRIVATE KEY" not in record.getMessage()
    # The same broken files are not reported again...
    clock.advance(10)
    watcher.poll()
    assert len(events) == 2
    # ...and valid material, once written, is taken and clears the error.
    fixed = dev_pki.leaf("svc", CLIENT_ID)
    clock.advance(10)
    assert watcher.poll().leaf.serial_number == fixed.serial
    assert watcher.status().last_error is None
    assert [event.kind for event in events] == ["loaded", "rejected", "rotated"]


def test_rewriting_identical_files_is_not_a_rotation(dev_pki: Any) -> None:
    clock, events = FakeClock(epoch=time.time()), []
    leaf = dev_pki.leaf("svc", CLIENT_ID)
    watcher = _watcher(dev_pki, leaf, clock, events, interval=0.0)
    with open(leaf.cert, "rb") as file:
        content = file.read()
    os.remove(leaf.cert)
    with open(leaf.cert, "wb") as file:  # same bytes, new inode
        file.write(content)
    assert watcher.check() is False
    assert watcher.poll().generation == 1
    assert [event.kind for event in events] == ["loaded"]


def test_reload_reads_the_files_whatever_the_interval(dev_pki: Any) -> None:
    leaf = dev_pki.leaf("svc", CLIENT_ID)
    mtls = MTLS(cert=leaf.cert, key=leaf.key, ca=dev_pki.ca(), check_interval=None)
    rotated = dev_pki.leaf("svc", CLIENT_ID)
    mtls.client_context().wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="localhost")
    assert mtls.status().serial == leaf.serial  # check_interval=None: no look at the files before a connection
    assert mtls.reload() is True
    assert mtls.status().serial == rotated.serial
    assert mtls.status().generation == 2
    assert mtls.reload() is False  # nothing new


def test_listener_exceptions_are_logged_and_swallowed(dev_pki: Any, caplog: pytest.LogCaptureFixture) -> None:
    leaf = dev_pki.leaf("svc", CLIENT_ID)

    def broken(event: RotationEvent) -> None:
        raise RuntimeError("listener bug")

    with caplog.at_level(logging.WARNING, logger="connectivity.security"):
        mtls = MTLS(cert=leaf.cert, key=leaf.key, ca=dev_pki.ca(), listener=broken)
    assert mtls.status().generation == 1
    assert any("listener raised" in record.getMessage() for record in caplog.records)


# --- Contexts following rotation, over real TLS -----------------------------------------------------------------


def test_new_connections_get_the_rotated_server_certificate(dev_pki: Any) -> None:
    clock = FakeClock(epoch=time.time())
    old = dev_pki.leaf("server", SERVER_ID, client=False)
    server = MTLS(cert=old.cert, key=old.key, ca=dev_pki.ca(), check_interval=5.0, clock=clock)
    client_leaf = dev_pki.leaf("client", CLIENT_ID, server=False)
    served: list[int] = []

    def record(handshake: PeerHandshake) -> None:
        served.append(handshake.certificate.serial_number)

    client = MTLS(
        cert=client_leaf.cert, key=client_leaf.key, ca=dev_pki.ca(), peer_id=SERVER_ID, verify_peer=record
    )
    with (
        serve(Counting(), ssl_context=server.server_context()) as upstream,
        httpx.Client(verify=client.client_context()) as established,
    ):
        assert established.get(upstream.url).status_code == 200
        new = dev_pki.leaf("server", SERVER_ID, client=False)
        clock.advance(5.0)
        # The established connection carries on with the certificate it was made with...
        assert established.get(upstream.url).status_code == 200
        assert served == [old.serial]
        # ...and a new connection gets the new one.
        with httpx.Client(verify=client.client_context()) as fresh:
            assert fresh.get(upstream.url).status_code == 200
    assert served == [old.serial, new.serial]
    assert server.status().generation == 2


def test_broken_rotation_keeps_serving_the_old_certificate(dev_pki: Any) -> None:
    clock = FakeClock(epoch=time.time())
    old = dev_pki.leaf("server", SERVER_ID, client=False)
    server = MTLS(cert=old.cert, key=old.key, ca=dev_pki.ca(), check_interval=1.0, clock=clock)
    client_leaf = dev_pki.leaf("client", CLIENT_ID, server=False)
    served: list[int] = []
    client = MTLS(
        cert=client_leaf.cert,
        key=client_leaf.key,
        ca=dev_pki.ca(),
        peer_id=SERVER_ID,
        verify_peer=lambda handshake: served.append(handshake.certificate.serial_number),
    )
    with serve(Counting(), ssl_context=server.server_context()) as upstream:
        shutil.copyfile(dev_pki.leaf("unrelated", SERVER_ID).cert, old.cert)  # a certificate without its key
        clock.advance(1.0)
        with httpx.Client(verify=client.client_context()) as http:
            assert http.get(upstream.url).status_code == 200
    assert served == [old.serial]
    assert server.status().last_error is not None
    assert "does not match the certificate" in server.status().last_error


def test_a_ca_removed_from_the_bundle_is_no_longer_trusted(dev_pki: Any) -> None:
    clock = FakeClock(epoch=time.time())
    first, second = dev_pki.ca("example.test", stem="first"), dev_pki.ca("example.test", stem="second")
    bundle = dev_pki.directory / "bundle.pem"
    bundle.write_bytes(Path(first).read_bytes() + Path(second).read_bytes())
    leaf = dev_pki.leaf("server", SERVER_ID, ca="first", client=False)
    server = MTLS(cert=leaf.cert, key=leaf.key, ca=str(bundle), check_interval=1.0, clock=clock)
    clients = {}
    for stem in ("first", "second"):
        client_leaf = dev_pki.leaf(f"client-{stem}", CLIENT_ID, ca=stem, server=False)
        clients[stem] = MTLS(cert=client_leaf.cert, key=client_leaf.key, ca=first, peer_id=SERVER_ID)

    def call(stem: str) -> int:
        with httpx.Client(verify=clients[stem].client_context()) as http:
            return http.get(upstream.url).status_code

    with serve(Counting(), ssl_context=server.server_context()) as upstream:
        assert call("first") == call("second") == 200
        bundle.write_bytes(Path(second).read_bytes())  # the first CA is retired
        clock.advance(1.0)
        assert call("second") == 200
        with pytest.raises(httpx.TransportError):
            call("first")
        assert upstream.app.requests == 3


def test_settings_made_on_the_outer_context_follow_rotation(dev_pki: Any, tls_listener: Any) -> None:
    clock = FakeClock(epoch=time.time())
    old = dev_pki.leaf("client", CLIENT_ID, server=False)
    client = MTLS(cert=old.cert, key=old.key, ca=dev_pki.ca(), peer_id=SERVER_ID, check_interval=1.0, clock=clock)
    context = client.client_context()
    context.set_alpn_protocols(["http/1.1"])
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    new = dev_pki.leaf("client", CLIENT_ID, server=False)
    clock.advance(1.0)
    server_leaf = dev_pki.leaf("server", SERVER_ID, client=False)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(server_leaf.cert, server_leaf.key)
    server.load_verify_locations(dev_pki.ca())
    server.verify_mode = ssl.CERT_REQUIRED
    server.set_alpn_protocols(["h2", "http/1.1"])
    listener = tls_listener(server)
    with context.wrap_socket(
        socket.create_connection(("127.0.0.1", listener.port)), server_hostname="localhost"
    ) as tls:
        tls.sendall(b"ping")
    (accepted,) = listener.wait(1)
    assert accepted.peer_serial == new.serial  # the rotated certificate...
    assert (accepted.alpn, accepted.version) == ("http/1.1", "TLSv1.3")  # ...with the settings made before
    server.maximum_version = ssl.TLSVersion.TLSv1_2
    legacy = tls_listener(server)
    with pytest.raises(ssl.SSLError):
        context.wrap_socket(socket.create_connection(("127.0.0.1", legacy.port)), server_hostname="localhost")


@pytest.mark.anyio
async def test_rotating_client_and_server_certificates_under_load_fails_no_request(dev_pki: Any) -> None:
    clock = FakeClock(epoch=time.time())
    total, workers, rotate_after = 200, 8, 60
    old_server = dev_pki.leaf("server", SERVER_ID, client=False)
    old_client = dev_pki.leaf("client", CLIENT_ID, server=False)
    seen_by_client: list[int] = []  # serials of the server certificates the client's handshakes met
    seen_by_server: list[int] = []  # serials of the client certificates the server's handshakes met
    server = MTLS(
        cert=old_server.cert,
        key=old_server.key,
        ca=dev_pki.ca(),
        check_interval=1.0,
        clock=clock,
        verify_peer=lambda handshake: seen_by_server.append(handshake.certificate.serial_number),
    )
    client = MTLS(
        cert=old_client.cert,
        key=old_client.key,
        ca=dev_pki.ca(),
        peer_id=SERVER_ID,
        check_interval=1.0,
        clock=clock,
        verify_peer=lambda handshake: seen_by_client.append(handshake.certificate.serial_number),
    )
    failures: list[Exception] = []
    statuses: list[int] = []
    rotated: list[Any] = []

    def rotate() -> None:
        rotated.extend(
            [dev_pki.leaf("server", SERVER_ID, client=False), dev_pki.leaf("client", CLIENT_ID, server=False)]
        )
        clock.advance(1.0)  # the next handshake on each side looks at the files

    with serve(Counting(), ssl_context=server.server_context()) as upstream:
        transport = PeerIdentityTransport(HTTPTransport(verify=client.client_context()), tls=client)
        async with httpx.AsyncClient(transport=transport) as http:

            async def worker(indexes: range) -> None:
                for _ in indexes:
                    try:
                        # Connection: close makes every request a new connection, so a new handshake.
                        response = await http.get(upstream.url, headers={"connection": "close"})
                        statuses.append(response.status_code)
                    except httpx.HTTPError as error:
                        failures.append(error)
                    if len(statuses) + len(failures) == rotate_after:
                        rotate()

            async with anyio.create_task_group() as group:
                for first in range(workers):
                    group.start_soon(worker, range(first, total, workers))
        connections = upstream.connections_opened
        requests = upstream.app.requests
    new_server, new_client = rotated
    assert failures == []
    assert statuses == [200] * total
    assert requests == total
    assert connections == total  # every request had its own connection and handshake
    for seen, old, new in ((seen_by_client, old_server, new_server), (seen_by_server, old_client, new_client)):
        assert len(seen) == total
        assert set(seen) == {old.serial, new.serial}
        assert seen.count(old.serial) >= rotate_after  # handshakes before the rotation
        assert seen.count(new.serial) >= total - rotate_after - workers  # every connection opened after it
        assert seen[-1] == new.serial
    for mtls, new in ((server, new_server), (client, new_client)):
        status = mtls.status()
        assert (status.generation, status.serial, status.last_error) == (2, new.serial, None)
