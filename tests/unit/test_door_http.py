"""The task door over real HTTP on 127.0.0.1 (the bridge's server, in this process, on a data
root of its own): what a hostile client sends, byte for byte, and what it gets back."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.metrics import Metrics
from bridge.web import server as web
from bridge.web.door import open_door
from taskd.settings import Settings
from taskd.tasktypes import load_types
from tests.support.procs import free_port, wait_until

TOKEN = "a-good-token-0123456789"
SUPPORT = Path(__file__).resolve().parents[1] / "support" / "schemas"
GOOD = b'{"type": "SLOW", "steps": 1}'


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    (tmp_path / "task_queue").mkdir()
    settings = Settings.from_env({"TASKD_DATA_ROOT": str(tmp_path), "TASKD_HTTP_TOKEN": TOKEN})
    door = open_door(settings, load_types([SUPPORT]))
    port = free_port()
    server = web.serve("127.0.0.1", port, Metrics(1.0), door)
    assert server is not None
    try:
        yield port, tmp_path / "task_queue"
    finally:
        server.stop()


def raw(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send `request` as it is; what came back (b"" when the server closed without a word)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def post(path: str, body: bytes, headers: str = "") -> bytes:
    head = (
        f"POST {path} HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {len(body)}\r\n{headers}\r\n"
    )
    return head.encode("latin-1") + body


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> dict[str, object]:
    return dict(json.loads(answer.split(b"\r\n\r\n", 1)[1]))


def test_a_token_in_any_bytes_is_refused_with_an_answer(served: tuple[int, Path]) -> None:
    port, _ = served
    for token in ("éééééééééééééééééé".encode("latin-1"), b"\xff" * 30, "тест".encode()):
        answer = raw(
            port,
            b"GET /api/tasks/u/a.SLOW HTTP/1.0\r\nAuthorization: Bearer " + token + b"\r\n\r\n",
        )
        assert status_of(answer) == 401, answer


@pytest.mark.parametrize("length", ["²", "-1", "1e3", "", "99999999999999999999"])
def test_a_content_length_that_is_not_a_number_is_answered(
    served: tuple[int, Path], length: str
) -> None:
    port, queue = served
    request = f"POST /api/tasks/u/a.SLOW HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n"
    request += f"Content-Length: {length}\r\n\r\n"
    answer = raw(port, request.encode("utf-8"))
    assert status_of(answer) in (411, 413), answer
    assert not (queue / "u").exists() or not list((queue / "u").iterdir())


def test_a_name_in_percent_escapes_or_utf8_is_the_name_meant(served: tuple[int, Path]) -> None:
    port, queue = served
    answer = raw(port, post("/api/tasks/u/caf%C3%A9.SLOW", GOOD))
    assert status_of(answer) == 201 and body_of(answer)["name"] == "café.SLOW", answer
    answer = raw(port, post("/api/tasks/u/th%C3%A9.SLOW", GOOD).replace(b"%C3%A9", "é".encode()))
    assert status_of(answer) == 201 and body_of(answer)["name"] == "thé.SLOW", answer
    assert sorted(p.name for p in (queue / "u").iterdir()) == ["café.SLOW", "thé.SLOW"]
    bad_paths = ("/api/tasks/u/%FF.SLOW", "/api/tasks/u/a%2Fb.SLOW", "/api/tasks/u%2Fv/a.SLOW")
    for bad in (*bad_paths, "/api/tasks/u/a%00.SLOW", "/api/tasks/u%00/a.SLOW"):
        assert status_of(raw(port, post(bad, GOOD))) == 400, bad
    assert sorted(p.name for p in (queue / "u").iterdir()) == ["café.SLOW", "thé.SLOW"]


def test_two_requests_for_one_task_id_make_one_file(served: tuple[int, Path]) -> None:
    port, queue = served
    answers: list[int] = []
    barrier = threading.Barrier(8)

    def one(n: int) -> None:
        barrier.wait()
        kind = ("SLOW", "RETRMS")[n % 2]
        body = GOOD if kind == "SLOW" else b'{"type": "RETRMS"}'
        answers.append(status_of(raw(port, post(f"/api/tasks/u/same.{kind}", body))))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 8
    created = answers.count(201)
    assert created <= 1 and len(list((queue / "u").iterdir())) == created
    assert sorted(set(answers) - {201}) in ([409], [409, 422])


@pytest.mark.parametrize("kind", ["dangling", "file", "elsewhere"])
def test_what_is_not_a_user_folder_is_neither_written_nor_read(
    served: tuple[int, Path], tmp_path: Path, kind: str
) -> None:
    port, queue = served
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.SLOW").write_text('{"type": "SLOW", "secret": "s3cr3t"}')
    if kind == "dangling":
        (queue / "v").symlink_to(tmp_path / "nowhere")
    elif kind == "file":
        (queue / "v").write_text("")
    else:
        (queue / "v").symlink_to(elsewhere)
    answer = raw(port, post("/api/tasks/v/a.SLOW", GOOD))
    assert status_of(answer) == 503, answer
    assert str(tmp_path) not in answer.decode()  # no path of the server's in the answer
    get = f"GET /api/tasks/v/x.SLOW HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    assert status_of(raw(port, get.encode())) == 404
    assert sorted(p.name for p in elsewhere.iterdir()) == ["x.SLOW"]


def test_a_body_over_the_limit_is_answered_413(served: tuple[int, Path]) -> None:
    port, _ = served
    answer = raw(port, post("/api/tasks/u/big.SLOW", b" " * (1024 * 1024 + 10)))
    assert status_of(answer) == 413 and "over the limit" in str(body_of(answer)["error"])


def test_a_request_that_trickles_in_is_cut_at_the_deadline(
    served: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, _ = served
    monkeypatch.setattr(web, "REQUEST_DEADLINE_S", 1.5)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET /api/tasks/u/a.SLOW HTTP/1.0\r\n")
        with pytest.raises(OSError):
            for _ in range(20):  # a header byte every half second, never finished
                conn.sendall(b"X")
                time.sleep(0.5)
                if conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    raise ConnectionResetError("closed")
    assert time.monotonic() - started < 6


def test_connections_beyond_the_cap_are_closed_and_the_rest_served(
    served: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, _ = served
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(web.MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            extra.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert extra.recv(100) == b""  # closed at once: no thread for it
    finally:
        for conn in idle:
            conn.close()
    wait_until(lambda: raw(port, b"GET /healthz HTTP/1.0\r\n\r\n") != b"", 10, what="a thread")


def test_a_user_folder_the_door_makes_is_a_folder(served: tuple[int, Path]) -> None:
    port, queue = served
    assert status_of(raw(port, post("/api/tasks/new_user/a.SLOW", GOOD))) == 201
    assert (queue / "new_user").is_dir() and not os.path.islink(queue / "new_user")
