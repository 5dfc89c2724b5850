"""The notify task body against a real SMTP server: what it reads, and whom it can reach.

The mail file sits in the user's own folder, so it is read only as a regular file there (never
through a link, never blocking on a FIFO); addresses with non-ASCII characters go out with
SMTPUTF8 when the server offers it, and are named one by one when it does not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from taskd.settings import Settings
from tasks import notify
from tasks.base import Job
from tasks.errors import Retryable, TaskFailed
from tests.support.procs import free_port
from tests.support.smtp import Handler

MAIL = b"From: ui@example.com\nTo: owner@example.com\nSubject: done\n\nYour task is done.\n"


class Server:
    def __init__(self, utf8: bool) -> None:
        self.handler = Handler()
        self.port = free_port()
        self.controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, enable_SMTPUTF8=utf8
        )

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}?timeout=5"


@pytest.fixture(params=[True, False], ids=["SMTPUTF8", "no SMTPUTF8"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    server = Server(utf8=request.param)
    server.controller.start()
    yield server
    server.controller.stop()


@pytest.fixture
def plain_server() -> Iterator[Server]:
    server = Server(utf8=False)
    server.controller.start()
    yield server
    server.controller.stop()


def _job(tmp_path: Path, url: str, notify_list: list[str], **settings: Any) -> Job:
    (tmp_path / "task_queue" / "7").mkdir(parents=True, exist_ok=True)
    return Job(
        job_id="notify-job-1",
        type="NOTIFY",
        user_id="7",
        task_id="t1",
        fields={"notify": notify_list},
        settings=Settings(data_root=tmp_path, smtp_url=url, **settings),
        progress=lambda *a, **k: None,
        extra={"task": {"task-id": "t1", "state": "SUCCESS", "job-id": "task-job-1"}},
    )


def _mail_path(tmp_path: Path) -> Path:
    return tmp_path / "task_queue" / "7" / "t1.notify.eml"


# --- what is read ------------------------------------------------------------------------------


def test_a_mail_file_that_is_a_hard_link_is_not_sent(tmp_path: Path, plain_server: Server) -> None:
    secret = tmp_path / "elsewhere.eml"
    secret.write_bytes(MAIL.replace(b"Your task is done.", b"SECRET"))
    _mail_path(tmp_path).parent.mkdir(parents=True)
    os.link(secret, _mail_path(tmp_path))
    job = _job(tmp_path, plain_server.url, ["a@example.com"])
    with pytest.raises(TaskFailed, match="t1.notify.eml is a hard link to another file"):
        notify.run.run(job)
    assert plain_server.handler.received == []


def test_a_mail_file_that_is_a_symlink_is_not_followed_or_sent(
    tmp_path: Path, plain_server: Server
) -> None:
    secret = tmp_path / "elsewhere.eml"
    secret.write_bytes(MAIL.replace(b"Your task is done.", b"SECRET"))
    _mail_path(tmp_path).parent.mkdir(parents=True)
    _mail_path(tmp_path).symlink_to(secret)
    job = _job(tmp_path, plain_server.url, ["a@example.com"])
    with pytest.raises(TaskFailed, match="t1.notify.eml is a symbolic link; nothing was sent"):
        notify.run.run(job)
    assert plain_server.handler.received == []
    assert _mail_path(tmp_path).is_symlink()  # left for ops to look at, as other failures are


@pytest.mark.parametrize("kind", ["FIFO", "folder"])
def test_a_fifo_or_folder_in_place_of_the_mail_fails_at_once(
    tmp_path: Path, plain_server: Server, kind: str
) -> None:
    path = _mail_path(tmp_path)
    path.parent.mkdir(parents=True)
    if kind == "FIFO":
        os.mkfifo(path)  # a plain open would wait here for a writer that never comes
    else:
        path.mkdir()
    job = _job(tmp_path, plain_server.url, ["a@example.com"])
    with pytest.raises(TaskFailed, match=f"not a regular file \\(a {kind}\\); nothing was sent"):
        notify.run.run(job)
    assert plain_server.handler.received == []


def test_a_mail_over_the_size_limit_is_not_sent(tmp_path: Path, plain_server: Server) -> None:
    job = _job(tmp_path, plain_server.url, ["a@example.com"], max_notify_bytes=len(MAIL) - 1)
    _mail_path(tmp_path).write_bytes(MAIL)
    with pytest.raises(TaskFailed, match="larger than .* TASKD_MAX_NOTIFY_BYTES"):
        notify.run.run(job)
    assert plain_server.handler.received == []


def test_the_sent_marker_is_written_whole_and_never_through_a_planted_link(
    tmp_path: Path, plain_server: Server
) -> None:
    job = _job(tmp_path, plain_server.url, ["a@example.com"])
    _mail_path(tmp_path).write_bytes(MAIL)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    folder = _mail_path(tmp_path).parent
    (folder / ".t1.notify.sent.tmp").symlink_to(victim)
    result = notify.run.run(job)
    assert result["sent-to"] == ["a@example.com"] and not _mail_path(tmp_path).exists()
    assert victim.read_text() == "keep me"
    marker = folder / ".t1.notify.sent"
    assert json.loads(marker.read_text())["job-id"] == "task-job-1"
    # Temp names are random: the planted name is never written, through or over.
    assert sorted(p.name for p in folder.iterdir()) == [".t1.notify.sent", ".t1.notify.sent.tmp"]
    assert (folder / ".t1.notify.sent.tmp").is_symlink()


def test_a_fifo_planted_as_the_sent_marker_does_not_hang_the_task(
    tmp_path: Path, plain_server: Server
) -> None:
    job = _job(tmp_path, plain_server.url, ["a@example.com"])
    os.mkfifo(_mail_path(tmp_path).parent / ".t1.notify.sent")
    with pytest.raises(TaskFailed, match="is gone; nothing to send"):
        notify.run.run(job)


# --- the instant after the server took it ------------------------------------------------------


class Watching(Handler):
    """Looks at the task's folder when the client says goodbye (QUIT): by then the mail must be
    recorded sent and deleted, so a worker killed before its goodbye does not send it again."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.at_quit: list[str] | None = None

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.at_quit = sorted(p.name for p in self.folder.iterdir())
        return "221 Bye"


def _send_watched(
    tmp_path: Path, recipients: list[str], answers: dict[str, str] | None = None
) -> tuple[Watching, dict[str, Any]]:
    """Run the notify task against a server that looks at the folder at QUIT; its result."""
    _mail_path(tmp_path).parent.mkdir(parents=True)
    handler = Watching(_mail_path(tmp_path).parent)
    handler.answers.update(answers or {})
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        job = _job(tmp_path, f"smtp://127.0.0.1:{controller.port}", recipients)
        _mail_path(tmp_path).write_bytes(MAIL)
        return handler, notify.run.run(job)
    finally:
        controller.stop()


def _marker(tmp_path: Path) -> Any:
    return json.loads((_mail_path(tmp_path).parent / ".t1.notify.sent").read_text())


def test_the_mail_is_recorded_and_deleted_before_the_goodbye(tmp_path: Path) -> None:
    handler, result = _send_watched(tmp_path, ["a@example.com"])
    assert handler.at_quit == [".t1.notify.sent"]
    assert _marker(tmp_path) == result and result["sent-to"] == ["a@example.com"]
    assert result["job-id"] == "task-job-1" and result["notify-error"] is None


def test_a_refused_recipient_is_recorded_in_place_of_the_outcome_foreseen(tmp_path: Path) -> None:
    both = ["a@example.com", "b@example.com"]
    handler, result = _send_watched(tmp_path, both, {"b@example.com": "550 no such user"})
    assert handler.at_quit == [".t1.notify.sent"]
    assert _marker(tmp_path) == result and result["sent-to"] == ["a@example.com"]
    assert result["notify-error"] == "b@example.com refused: 550 no such user"


def test_a_send_that_does_not_happen_leaves_the_mail_and_no_record(tmp_path: Path) -> None:
    job = _job(tmp_path, f"smtp://127.0.0.1:{free_port()}?timeout=2", ["a@example.com"])
    _mail_path(tmp_path).write_bytes(MAIL)
    with pytest.raises(Retryable, match="cannot reach SMTP server"):
        notify.run.run(job)
    assert sorted(p.name for p in _mail_path(tmp_path).parent.iterdir()) == ["t1.notify.eml"]


def test_a_recipient_asked_to_wait_keeps_the_mail_for_the_retry(tmp_path: Path) -> None:
    both = ["a@example.com", "b@example.com"]
    with pytest.raises(Retryable, match="try again later for b@example.com") as caught:
        _send_watched(tmp_path, both, {"b@example.com": "450 mailbox busy"})
    assert caught.value.meta["recipients"] == ["b@example.com"]
    assert sorted(p.name for p in _mail_path(tmp_path).parent.iterdir()) == ["t1.notify.eml"]


def test_a_folder_at_the_sent_record_s_name_sends_nothing_and_says_why(
    tmp_path: Path, plain_server: Server
) -> None:
    # A rename cannot replace a folder: sent, the mail would have no record and go out again.
    job = _job(tmp_path, plain_server.url, ["a@example.com"])
    _mail_path(tmp_path).write_bytes(MAIL)
    (_mail_path(tmp_path).parent / ".t1.notify.sent").mkdir()
    with pytest.raises(TaskFailed, match=r"\.t1\.notify\.sent is a folder.*nothing was sent"):
        notify.run.run(job)
    assert plain_server.handler.received == []
    assert _mail_path(tmp_path).exists()


# --- whom it can reach -------------------------------------------------------------------------


def test_non_ascii_addresses_go_out_with_smtputf8_or_are_named_one_by_one(
    tmp_path: Path, server: Server
) -> None:
    utf8 = server.controller.SMTP_kwargs.get("enable_SMTPUTF8", False)
    names = ["jörg@exämple.org", "用户@例子.广告", "hans@exämple.org", "plain@example.org"]
    job = _job(tmp_path, server.url, names)
    _mail_path(tmp_path).write_bytes(MAIL)
    result = notify.run.run(job)
    (got,) = server.handler.received
    if utf8:
        assert result["sent-to"] == names and result["notify-error"] is None
        assert got.recipients == names
        return
    # Without SMTPUTF8 a non-ASCII domain still goes out in its IDNA form; a non-ASCII local
    # part cannot, and only that address is named.
    assert result["sent-to"] == ["hans@exämple.org", "plain@example.org"]
    assert got.recipients == ["hans@xn--exmple-cua.org", "plain@example.org"]
    error = result["notify-error"]
    assert "jörg@exämple.org: not sent" in error and "用户@例子.广告: not sent" in error
    assert "SMTPUTF8" in error and "internal error" not in error
    assert not _mail_path(tmp_path).exists()


def test_only_non_ascii_recipients_and_no_smtputf8_sends_nothing_and_says_why(
    tmp_path: Path, plain_server: Server
) -> None:
    job = _job(tmp_path, plain_server.url, ["jörg@exämple.org"])
    _mail_path(tmp_path).write_bytes(MAIL)
    result = notify.run.run(job)
    assert result["sent-to"] == [] and plain_server.handler.received == []
    assert result["notify-error"].startswith("jörg@exämple.org: not sent")


def test_a_long_notify_list_with_repeats_is_deduplicated_in_order() -> None:
    entries = [f"u{n % 500}@example.com" for n in range(50_000)]
    good, bad = notify.split_recipients(entries)
    assert good == [f"u{n}@example.com" for n in range(500)] and bad == []
