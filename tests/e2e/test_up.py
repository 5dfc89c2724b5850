"""`taskd up` from nothing: its own Redis (with a password), the bridge, a worker and Flower (with
a login); the seed's task runs; no secret shows on a command line or in the output, and another
local user can read none of them, use the queue or see Flower; SIGTERM stops every child and `up`
exits 0."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import Drop
from tests.e2e.test_seeds import SEED_RETRMS
from tests.support.procs import REPO, free_port, taskd_env, wait_until


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        parents[int(entry.name)] = int(stat_line.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        kids = {child for child, ppid in parents.items() if ppid == parent}
        todo += list(kids - found)
        found |= kids
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class Up:
    """`taskd up` as a subprocess, its output (stdout and stderr) in one log file."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.env, self.log, self.args = env, log, args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Up:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taskcli.cli", "up", *self.args],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, needle: str, timeout: float = 60) -> None:
        def seen() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"up exited with {self.proc.returncode}:\n{self.text()}")
            return needle in self.text()

        wait_until(seen, timeout, interval=0.1, what=f"{needle!r} in up's output")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def anonymous_reply(port: int, command: bytes = b"PING") -> bytes:
    """Redis's answer to `command` from a client that gives no password."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command + b"\r\n")
        return sock.recv(4096)


def flower_status(port: int, path: str, auth: str | None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


# What another local user tries, run as `nobody` with the system's Python (the project's venv
# may sit where nobody can reach it): read the secrets, talk to Redis without the password,
# open Flower without a login.
NOBODY_TRIES = r"""
import json, os, socket, sys, urllib.error, urllib.request
private, redis_dir, redis_port, flower_port = sys.argv[1:5]
out = {}
def attempt(name, call):
    try:
        call()
        out[name] = "ok"
    except OSError as exc:
        out[name] = type(exc).__name__
for name in ("redis.pass", "flower.pass"):
    attempt(name, lambda: open(os.path.join(private, name)).read())
attempt("redis dir", lambda: os.listdir(redis_dir))
attempt("redis.conf", lambda: open(os.path.join(redis_dir, "redis.conf")).read())
with socket.create_connection(("127.0.0.1", int(redis_port)), timeout=5) as sock:
    sock.sendall(b"PING\r\nLPUSH retrieve injected\r\nSET taskd:cancel:x 1\r\n")
    replies = b""
    while replies.count(b"\r\n") < 3:
        chunk = sock.recv(4096)
        if not chunk:
            break
        replies += chunk
out["redis"] = replies.decode(errors="replace").split("\r\n")[:3]
try:
    urllib.request.urlopen(f"http://127.0.0.1:{flower_port}/api/workers", timeout=5)
    out["flower"] = 200
except urllib.error.HTTPError as exc:
    out["flower"] = exc.code
print(json.dumps(out))
"""


def system_python() -> str | None:
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", *argv], capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder every user may enter (pytest's own tmp_path is private to its user), so what
    keeps another user out is the modes `up` sets, not the folder above."""
    folder = Path(tempfile.mkdtemp(prefix="taskd-up-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_up_from_nothing_runs_the_seed_keeps_its_secrets_and_stops_on_sigterm(
    shared_tmp: Path,
) -> None:
    data_root = shared_tmp / "data"
    (shared_tmp / "files").mkdir()
    redis_port, flower_port = free_port(), free_port()
    env = taskd_env(
        data_root,
        f"redis://127.0.0.1:{redis_port}/0",
        {"TASKD_ALLOWED_FILE_ROOTS": str(shared_tmp / "files")},
    )
    env.pop("FLOWER_BASIC_AUTH", None)
    up = Up(env, shared_tmp / "up.log", "--sample", "--workers", "1")
    up.args += ("--flower-port", str(flower_port))
    up.start()
    try:
        up.wait_for("drop task files into")
        drop = Drop(data_root, "3")
        drop.write("0001.RETRMS", SEED_RETRMS)
        done = drop.wait_state("0001", {"SUCCESS", "FAILURE"}, timeout=120)
        assert done["state"] == "SUCCESS", done.get("error")
        assert Path(done["output"]).is_file()
        kids = descendants(up.pid)
        names = {cmdline(pid) for pid in kids if alive(pid)}
        assert any(b"redis-server" in n for n in names)
        assert any(b"flower" in n for n in names) and any(b"worker" in n for n in names)
        assert any(b"bridge" in n for n in names)

        private = data_root / ".taskd"
        redis_password = (private / "redis.pass").read_text().strip()
        flower_password = (private / "flower.pass").read_text().strip()
        check_the_secrets(data_root, redis_port, redis_password, flower_password)
        wait_until(
            lambda: flower_status(flower_port, "/api/workers", f"taskd:{flower_password}") == 200,
            30,
            interval=0.3,
            what="Flower to let its login in",
        )
        assert flower_status(flower_port, "/api/workers", None) == 401
        assert flower_status(flower_port, "/", "taskd:wrong") == 401
        for pid in kids:  # no secret on any command line, `ps` shows them to every user
            line = cmdline(pid)
            assert redis_password.encode() not in line and flower_password.encode() not in line
        bridge = next(pid for pid in kids if b"taskcli.cli\0bridge" in cmdline(pid))
        bridge_env = Path(f"/proc/{bridge}/environ").read_bytes()
        assert f":{redis_password}@".encode() in bridge_env  # the URL comes by the environment
        assert b"FLOWER_BASIC_AUTH" not in bridge_env  # Flower's login only to Flower
        check_another_user(data_root, redis_port, flower_port)
    finally:
        code = up.stop(signal.SIGTERM)
    output = up.text()
    assert code == 0, output[-3000:]
    assert redis_password not in output and flower_password not in output
    assert f"Flower: http://127.0.0.1:{flower_port} (user taskd, password in " in output
    assert str(private / "flower.pass") in output
    assert not [pid for pid in kids if alive(pid)]
    # The private Redis kept its data append-only under the data root.
    assert list((data_root / "redis").glob("appendonly*"))
    assert os.listdir(data_root / "download" / "3")


def check_the_secrets(
    data_root: Path, redis_port: int, redis_password: str, flower_password: str
) -> None:
    assert len(redis_password) >= 40 and len(flower_password) >= 40
    assert redis_password != flower_password
    for path in (data_root / ".taskd" / "redis.pass", data_root / ".taskd" / "flower.pass"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((data_root / "redis").stat().st_mode) == 0o700
    assert stat.S_IMODE((data_root / "redis" / "redis.conf").stat().st_mode) == 0o600
    assert anonymous_reply(redis_port).startswith(b"-NOAUTH")
    known = redis.Redis(port=redis_port, password=redis_password, socket_timeout=5)
    assert known.ping()
    assert known.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert known.config_get("appendonly") == {"appendonly": "yes"}
    assert known.config_get("protected-mode") == {"protected-mode": "yes"}
    known.close()


def check_another_user(data_root: Path, redis_port: int, flower_port: int) -> None:
    python = system_python()
    if os.geteuid() != 0 or shutil.which("runuser") is None or python is None:
        pytest.skip("needs root, runuser and a system python3 to act as another user")
    tried = as_nobody(
        python,
        "-c",
        NOBODY_TRIES,
        str(data_root / ".taskd"),
        str(data_root / "redis"),
        str(redis_port),
        str(flower_port),
    )
    assert tried.returncode == 0, tried.stderr
    out = json.loads(tried.stdout)
    assert out["redis.pass"] == out["flower.pass"] == "PermissionError"
    assert out["redis dir"] == out["redis.conf"] == "PermissionError"
    assert all(reply.startswith("-NOAUTH") for reply in out["redis"]), out["redis"]
    assert out["flower"] == 401
