"""Notify mails through the real bridge, workers and an SMTP server with STARTTLS and AUTH."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Drop
from tests.support.procs import BridgeProc, wait_until
from tests.support.smtp import SmtpServer


def _mail(drop: Drop, task_id: str, to: str = "ui-user@example.com", extra: str = "") -> Path:
    path = drop.dir / f"{task_id}.notify.eml"
    path.write_bytes(
        (
            f"From: ui@example.com\nTo: {to}\nSubject: task {task_id} is done\n{extra}\n"
            "Your search has finished.\n"
        ).encode()
    )
    return path


def _addr(drop: Drop, name: str) -> str:
    return f"{name}.{drop.user}@example.com"


def test_sent_once_to_the_notify_list_with_taskd_headers(
    bridge: BridgeProc, drop: Drop, smtp_server: SmtpServer
) -> None:
    yukoh, hank = _addr(drop, "yukoh"), _addr(drop, "hank")
    mail = _mail(drop, "n1")
    drop.write(
        "n1.SLOW",
        {"type": "SLOW", "steps": 1, "step-seconds": 0.01, "notify": [yukoh, f"Hank <{hank}>"]},
    )
    done = drop.wait_state("n1", "SUCCESS", timeout=20)
    fields = wait_until(
        lambda: drop.fields("n1").get("notified-at") and drop.fields("n1"), 20, what="notified-at"
    )
    assert not mail.exists()
    (got,) = smtp_server.handler.to(yukoh)
    assert sorted(got.recipients) == sorted([yukoh, hank])
    assert got.sender == "taskd@test.example"
    message = got.message
    assert message["X-Taskd-Task"] == "n1" and message["X-Taskd-State"] == "SUCCESS"
    assert message["Message-ID"] == f"<{done['job-id']}.taskd@{message['Message-ID'].split('@')[1]}"
    assert message["Subject"] == "task n1 is done"
    assert "notify-error" not in fields


def test_a_mail_written_after_the_task_ended_is_sent_when_seen(
    bridge: BridgeProc, drop: Drop, smtp_server: SmtpServer
) -> None:
    to = _addr(drop, "late")
    drop.write("n2.SLOW", {"type": "SLOW", "steps": 0})
    drop.wait_state("n2", "SUCCESS", timeout=20)
    _mail(drop, "n2", to=to, extra="Message-ID: <ui-own-id@example.com>\n")
    wait_until(lambda: drop.fields("n2").get("notified-at"), 20, what="notified-at")
    (got,) = smtp_server.handler.to(to)
    assert got.message["Message-ID"] == "<ui-own-id@example.com>"  # the mail's own To: used


def test_smtp_down_then_up_sends_once_after(
    bridge: BridgeProc, drop: Drop, smtp_server: SmtpServer
) -> None:
    to = _addr(drop, "down")
    mail = _mail(drop, "n3")
    smtp_server.stop()
    try:
        drop.write("n3.SLOW", {"type": "SLOW", "steps": 0, "notify": [to]})
        drop.wait_state("n3", "SUCCESS", timeout=20)
        waiting = wait_until(
            lambda: drop.fields("n3").get("notify-retry-at"), 20, what="notify-retry-at"
        )
        assert waiting and mail.exists()
    finally:
        smtp_server.start()
    fields = wait_until(
        lambda: drop.fields("n3").get("notified-at") and drop.fields("n3"), 30, what="notified-at"
    )
    assert "notify-retry-at" not in fields and not mail.exists()
    assert len(smtp_server.handler.to(to)) == 1


def test_4xx_then_accept_and_5xx_for_one_recipient(
    bridge: BridgeProc, drop: Drop, smtp_server: SmtpServer
) -> None:
    ok, later, never = _addr(drop, "ok"), _addr(drop, "later"), _addr(drop, "never")
    smtp_server.handler.answers[later] = "451 4.3.0 try again later"
    smtp_server.handler.answers[never] = "550 5.1.1 no such user"
    _mail(drop, "n4")
    drop.write("n4.SLOW", {"type": "SLOW", "steps": 0, "notify": [ok, later, never]})
    wait_until(lambda: drop.fields("n4").get("notify-retry-at"), 20, what="a retry for 4xx")
    assert len(smtp_server.handler.to(ok)) == 1
    del smtp_server.handler.answers[later]
    fields = wait_until(
        lambda: drop.fields("n4").get("notified-at") and drop.fields("n4"), 30, what="notified-at"
    )
    assert len(smtp_server.handler.to(later)) == 1 and len(smtp_server.handler.to(ok)) == 1
    assert never in fields["notify-error"] and "550" in fields["notify-error"]


def test_header_injection_and_multiple_addresses_are_refused_by_name(
    bridge: BridgeProc, drop: Drop, smtp_server: SmtpServer
) -> None:
    good = _addr(drop, "good")
    evil = _addr(drop, "evil")
    notify = [good, f"x@example.com\r\nBcc: {evil}", f"a@example.com, {evil}", "not an address"]
    _mail(drop, "n5")
    drop.write("n5.SLOW", {"type": "SLOW", "steps": 0, "notify": notify})
    fields = wait_until(
        lambda: drop.fields("n5").get("notified-at") and drop.fields("n5"), 20, what="notified-at"
    )
    assert len(smtp_server.handler.to(good)) == 1 and smtp_server.handler.to(evil) == []
    error = fields["notify-error"]
    assert "Bcc" in error and "a@example.com" in error and "not an address" in error


def test_a_cancelled_task_sends_nothing_and_loses_its_notify_mail(
    bridge: BridgeProc, drop: Drop, smtp_server: SmtpServer
) -> None:
    to = _addr(drop, "cancel")
    mail = _mail(drop, "n6")
    drop.write("n6.SLOW", {"type": "SLOW", "steps": 50, "step-seconds": 0.1, "notify": [to]})
    drop.wait_state("n6", "PROGRESS", timeout=15)
    path = drop.find("n6")
    assert path is not None
    path.unlink()
    wait_until(lambda: not mail.exists(), 10, what="the notify mail removed")
    drop.write("after.SLOW", {"type": "SLOW", "steps": 0})
    drop.wait_state("after", "SUCCESS", timeout=15)
    assert smtp_server.handler.to(to) == []
