"""Real redis-servers as ops run them: behind an ACL user, behind TLS with a CA of the test's
own, and a master with a replica watched by three sentinels. Each on free ports, killed at the
end of the test."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from tests.support.procs import free_port, stop_process, wait_until

ACL_USER, ACL_PASSWORD = "taskd", "Acl-Secret-0451"
TLS_PASSWORD = "Tls-Secret-0452"
MASTER_NAME = "taskdmaster"


def _binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server is not installed; `make test` installs it")
    return found


def _answers(port: int, context: ssl.SSLContext | None = None) -> bool:
    """Something that speaks Redis listens on `port` (an error for want of a login counts)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw:
            if context is None:
                raw.sendall(b"PING\r\n")
                return raw.recv(64)[:1] in (b"+", b"-")
            with context.wrap_socket(raw, server_hostname="localhost") as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64)[:1] in (b"+", b"-")
    except OSError:
        return False


@dataclass
class Server:
    workdir: Path
    args: list[str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, context: ssl.SSLContext | None = None) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        base = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"]
        with open(self.workdir / "redis.log", "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [_binary(), *self.args, *base, str(self.workdir)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(lambda: _answers(self.port, context), 15, what=f"redis on {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def acl_server(workdir: Path) -> Server:
    """Only an ACL user gets in (the default user is off)."""
    server = Server(workdir, [])
    server.args = [
        "--port",
        str(server.port),
        "--user",
        "default",
        "off",
        "--user",
        ACL_USER,
        "on",
        f">{ACL_PASSWORD}",
        "~*",
        "&*",
        "+@all",
    ]
    return server


@dataclass
class Tls:
    server: Server
    ca_file: Path
    client_context: ssl.SSLContext


def tls_server(workdir: Path) -> Tls:
    """TLS only (no plain port), a password, a certificate from a CA made for the test."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = workdir / "ca.pem", workdir / "cert.pem", workdir / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    server = Server(workdir, [])
    server.args = [
        "--port",
        "0",
        "--tls-port",
        str(server.port),
        "--tls-cert-file",
        str(cert_file),
        "--tls-key-file",
        str(key_file),
        "--tls-ca-cert-file",
        str(ca_file),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        TLS_PASSWORD,
    ]
    context = ssl.create_default_context(cafile=str(ca_file))
    return Tls(server, ca_file, context)


@dataclass
class SentinelSet:
    master: Server
    replica: Server
    sentinels: list[Server]

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{s.port}/0" for s in self.sentinels)

    def all(self) -> list[Server]:
        return [self.master, self.replica, *self.sentinels]


def sentinel_set(workdir: Path) -> SentinelSet:
    """A master, its replica, and three sentinels that fail over a second after the master
    stops answering."""
    master = Server(workdir / "master", [])
    master.args = ["--port", str(master.port)]
    replica = Server(workdir / "replica", [])
    replica.args = ["--port", str(replica.port), "--replicaof", "127.0.0.1", str(master.port)]
    sentinels = []
    for n in range(3):
        folder = workdir / f"sentinel{n}"
        folder.mkdir(parents=True, exist_ok=True)
        sentinel = Server(folder, [])
        conf = folder / "sentinel.conf"
        conf.write_text(
            f"port {sentinel.port}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {MASTER_NAME} 5000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        sentinel.args = [str(conf), "--sentinel"]
        sentinels.append(sentinel)
    return SentinelSet(master, replica, sentinels)
