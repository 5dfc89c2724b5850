"""The SMTP client against real aiosmtpd servers: implicit TLS (smtps://) and STARTTLS with AUTH."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from aiosmtpd.controller import Controller

from tasks.errors import TaskFailed
from tasks.smtp import SmtpTarget, SmtpUnavailable, send
from tests.support.procs import free_port
from tests.support.smtp import PASSWORD, USER, Handler, SmtpServer


@pytest.fixture
def smtps(tmp_path: Path) -> Iterator[tuple[Handler, int, Path]]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    handler = Handler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ssl_context=context)
    controller.start()
    yield handler, port, cafile
    controller.stop()


def test_smtps_url_sends_over_implicit_tls(smtps: tuple[Handler, int, Path]) -> None:
    handler, port, cafile = smtps
    target = SmtpTarget.from_url(f"smtps://127.0.0.1:{port}?cafile={cafile}", 5)
    assert target.implicit_tls and target.port == port
    outcome = send(target, "taskd@x.example", ["a@x.example"], b"Subject: hi\r\n\r\nbody\r\n")
    assert outcome.sent == ("a@x.example",)
    assert handler.received[0].message["Subject"] == "hi"


def test_starttls_with_auth(tmp_path: Path) -> None:
    server = SmtpServer(tmp_path)
    server.start()
    try:
        good = SmtpTarget.from_url(server.url, 5)
        assert good.starttls and good.user == USER and good.password == PASSWORD
        assert send(good, "t@x.example", ["b@x.example"], b"Subject: s\r\n\r\nb\r\n").sent
        assert server.handler.to("b@x.example")
    finally:
        server.stop()


def test_an_unreachable_server_is_a_passing_failure() -> None:
    target = SmtpTarget.from_url(f"smtp://127.0.0.1:{free_port()}?timeout=2", 5)
    with pytest.raises(SmtpUnavailable, match="cannot reach"):
        send(target, "t@x.example", ["b@x.example"], b"Subject: s\r\n\r\nb\r\n")


def test_a_url_that_is_not_smtp_says_how_to_write_one() -> None:
    with pytest.raises(TaskFailed, match="smtps://host:465"):
        SmtpTarget.from_url("http://mail.example", 5)
