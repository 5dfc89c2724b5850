"""HTTP tasks end to end: a real bridge and worker (queue `http`) calling a real HTTP server on
127.0.0.1, listed in TASKD_HTTP_ALLOWED_HOSTS: the answer's status and body kept, 5xx tried
again on the type's intervals, redirects followed only within the list, bodies bounded."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from taskd.settings import HTTP_SCHEMA_DIR
from tests.conftest import Drop
from tests.support.procs import BridgeProc, Worker, running

BIG = b"x" * 300_000


class _Handler(BaseHTTPRequestHandler):
    hits: Counter[str] = Counter()

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, kind: str = "text/plain", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.hits[self.path] += 1
        port = self.server.server_address[1]
        if self.path == "/hello":
            self._send(200, b"hi there")
        elif self.path == "/flaky":
            if self.hits[self.path] == 1:
                self._send(503, b"busy")
            else:
                self._send(200, b"ok now")
        elif self.path == "/redirect-in":
            self._send(302, b"", Location="/hello")
        elif self.path == "/redirect-out":
            self._send(302, b"", Location=f"http://localhost:{port}/hello")
        elif self.path == "/big":
            self._send(200, BIG)
        else:
            self._send(404, b"no such thing")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        got = self.rfile.read(length)
        echo = {"body": got.decode(), "type": self.headers.get("Content-Type")}
        self._send(200, json.dumps(echo).encode(), "application/json")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def http_env(
    env: dict[str, str], server: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    # The built-in type, retried after 1 s rather than 10 (a site schema of the same name wins).
    site = tmp_path_factory.mktemp("site-types")
    schema = json.loads((HTTP_SCHEMA_DIR / "HTTP.schema.json").read_text())
    schema["x-taskd"]["retry-intervals"] = "1 1"
    (site / "HTTP.schema.json").write_text(json.dumps(schema))
    return {
        **env,
        "TASKD_HTTP_ALLOWED_HOSTS": server,
        "TASKD_HTTP_BODY_BYTES": "100000",
        "TASKD_SCHEMA_PATH": str(site),
    }


@pytest.fixture(scope="module")
def http_worker(http_env: dict[str, str], data_root: Path) -> Iterator[Worker]:
    log = data_root / "worker-http.log"
    with running(Worker(http_env, log, name="whttp", concurrency=2, queues="http")) as proc:
        yield proc


@pytest.fixture
def http_bridge(
    http_env: dict[str, str], data_root: Path, http_worker: Worker, worker: Worker
) -> Iterator[BridgeProc]:
    with running(BridgeProc(http_env, data_root / "bridge-http.log")) as proc:
        yield proc


def _ended(drop: Drop, task_id: str, **fields: object) -> dict[str, object]:
    drop.write(f"{task_id}.HTTP", {"type": "HTTP", **fields})
    return drop.wait_state(task_id, {"SUCCESS", "FAILURE"}, timeout=40)


def test_a_get_keeps_the_status_and_the_body(
    http_bridge: BridgeProc, drop: Drop, server: str
) -> None:
    done = _ended(drop, "h1", url=f"http://{server}/hello", description="greeting")
    assert done["state"] == "SUCCESS", done
    assert done["http-status"] == 200 and done["content-type"] == "text/plain"
    assert done["body-bytes"] == 8 and done["body-truncated"] is False
    output = Path(str(done["output"]))
    assert output.name == "greeting.body" and output.read_bytes() == b"hi there"


def test_a_post_sends_its_body(http_bridge: BridgeProc, drop: Drop, server: str) -> None:
    done = _ended(drop, "h2", url=f"http://{server}/echo", method="POST", body='{"a": 1}')
    assert done["state"] == "SUCCESS", done
    echo = json.loads(Path(str(done["output"])).read_text())
    assert echo == {"body": '{"a": 1}', "type": "application/json"}


def test_a_5xx_is_tried_again_and_then_succeeds(
    http_bridge: BridgeProc, drop: Drop, server: str
) -> None:
    done = _ended(drop, "h3", url=f"http://{server}/flaky")
    assert done["state"] == "SUCCESS", done
    assert _Handler.hits["/flaky"] == 2  # a 503, then the try that succeeded
    assert Path(str(done["output"])).read_bytes() == b"ok now"


def test_a_4xx_fails_naming_the_status_and_keeping_the_body(
    http_bridge: BridgeProc, drop: Drop, server: str
) -> None:
    done = _ended(drop, "h4", url=f"http://{server}/missing")
    assert done["state"] == "FAILURE"
    assert "the server answered 404 Not Found; its body is in " in str(done["error"])
    assert Path(str(done["error"]).rsplit(" ", 1)[1]).read_bytes() == b"no such thing"


def test_redirects_are_followed_only_within_the_allowed_hosts(
    http_bridge: BridgeProc, drop: Drop, server: str
) -> None:
    inside = _ended(drop, "h5", url=f"http://{server}/redirect-in")
    assert inside["state"] == "SUCCESS" and Path(str(inside["output"])).read_bytes() == b"hi there"
    hits = _Handler.hits["/hello"]
    outside = _ended(drop, "h6", url=f"http://{server}/redirect-out")
    assert outside["state"] == "FAILURE"
    assert "a redirect to 'http://localhost:" in str(outside["error"])
    assert "is not in TASKD_HTTP_ALLOWED_HOSTS" in str(outside["error"])
    assert _Handler.hits["/hello"] == hits  # never called through the name not listed


def test_a_host_not_listed_is_never_called(http_bridge: BridgeProc, drop: Drop) -> None:
    done = _ended(drop, "h7", url="http://127.0.0.2:9/anything")
    assert done["state"] == "FAILURE"
    assert "host 127.0.0.2:9 is not in TASKD_HTTP_ALLOWED_HOSTS" in str(done["error"])


def test_a_body_over_the_limit_is_cut_and_says_so(
    http_bridge: BridgeProc, drop: Drop, server: str
) -> None:
    done = _ended(drop, "h8", url=f"http://{server}/big")
    assert done["state"] == "SUCCESS", done
    assert done["body-truncated"] is True and done["body-bytes"] == 100_000
    assert Path(str(done["output"])).stat().st_size == 100_000


def test_without_allowed_hosts_http_is_off(bridge: BridgeProc, drop: Drop) -> None:
    drop.write("h9.HTTP", {"type": "HTTP", "url": "http://127.0.0.1/"})
    done = drop.wait_state("h9", "REJECTED", timeout=30)
    assert "task type 'HTTP' is off on this system" in done["error"]
    assert "TASKD_HTTP_ALLOWED_HOSTS" in done["error"]
