"""HTTP: a GET or POST to a URL of a host ops allowed in TASKD_HTTP_ALLOWED_HOSTS.

The URL's host must be listed (`host`, or `host:port` for that port alone). Its addresses are
looked up once and the request goes to one of them: an address that is not public (private,
loopback, link-local, reserved) is refused unless that address is listed itself, so a listed
name that resolves, or is made to resolve, inside the network does not reach it. A redirect (at
most `MAX_REDIRECTS`) is followed only to a URL that passes the same checks. No proxy from the
environment is used. Connection errors, timeouts and 5xx answers are retried on the type's
intervals; the answer's status and body (at most TASKD_HTTP_BODY_BYTES) are kept: SUCCESS for a
2xx, FAILURE naming the status for anything else.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

from tasks import pack
from tasks.app import app
from tasks.base import Job, TaskdTask
from tasks.errors import Retryable, TaskFailed

MAX_REDIRECTS = 5
DEFAULT_TIMEOUT_S = 30.0
CHUNK = 1 << 16
REDIRECTS = {301, 302, 303, 307, 308}
RESERVED_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


@dataclass(frozen=True)
class Target:
    """Where one request goes: the URL's parts and the address it was checked to."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def _entries(allowed: Iterable[str]) -> list[tuple[str, int | None]]:
    out = []
    for entry in allowed:
        parts = urlsplit("//" + entry)
        try:
            port = parts.port
        except ValueError:
            continue  # not host[:port]: matches nothing
        if parts.hostname:
            out.append((parts.hostname, port))
    return out


def listed(host: str, port: int, allowed: Iterable[str]) -> bool:
    """Whether `host` (a name or an address) on `port` is in the allow-list."""
    return any(h == host and p in (None, port) for h, p in _entries(allowed))


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def public(address: str) -> bool:
    """Whether an address is on the public internet, an IPv4 address carried inside an IPv6
    one (mapped, 6to4, NAT64, compatible) judged as itself."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is None and (ip in _NAT64 or int(ip) >> 32 == 0):
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None and not inner.is_global:
            return False
    return ip.is_global


def check(url: str, allowed: tuple[str, ...], resolve: Any = socket.getaddrinfo) -> Target:
    """The target of `url`, if its host is listed and the address it goes to may be reached;
    TaskFailed saying which rule it broke otherwise."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise TaskFailed(f"field 'url': {url!r} is not an http:// or https:// URL with a host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise TaskFailed(f"field 'url': {url!r} has a port that is not a number") from None
    host = parts.hostname.lower()
    if not listed(host, port, allowed):
        raise TaskFailed(
            f"field 'url': host {host}:{port} is not in TASKD_HTTP_ALLOWED_HOSTS "
            f"({', '.join(allowed)}); ask ops to allow it"
        )
    try:
        found = resolve(host, port, type=socket.SOCK_STREAM)
    except UnicodeError:
        raise TaskFailed(f"field 'url': {host!r} is not a host name") from None
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_NONAME:
            raise TaskFailed(f"field 'url': no such host {host} ({exc.strerror})") from None
        raise Retryable(f"the name {host} cannot be looked up now ({exc}); will try again") from exc
    for *_, sockaddr in found:
        address = str(sockaddr[0])
        if public(address) or listed(address, port, allowed):
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            return Target(scheme, host, port, path, address)
    raise TaskFailed(
        f"field 'url': {host} resolves to {found[0][4][0]}, an address inside the network; "
        "only public addresses are called unless ops list the address itself in "
        "TASKD_HTTP_ALLOWED_HOSTS"
    )


class _PinnedHTTP(http.client.HTTPConnection):
    """A connection to the address checked, whatever the name resolves to by now."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self.address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """`_PinnedHTTP` over TLS, the certificate checked against the URL's host name."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(
            target.host, target.port, timeout=timeout, context=ssl.create_default_context()
        )
        self.address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
CREDENTIALS = {"authorization", "cookie", "proxy-authorization"}


def headers_of(job: Job) -> dict[str, str]:
    given = {str(k): str(v) for k, v in (job.fields.get("headers") or {}).items()}
    for name, value in given.items():
        if name.lower() in RESERVED_HEADERS:
            raise TaskFailed(
                f"field 'headers': {name!r} is taskd's to set (Host, Content-Length and the "
                "connection's); remove it"
            )
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise TaskFailed(
                f"field 'headers': {name!r} is not a header name, or its value holds a control "
                "character (a line break, say); fix or remove it"
            )
    return {"User-Agent": "taskd", **given}


@dataclass
class Answer:
    status: int
    reason: str
    content_type: str
    kept: int
    truncated: bool


def _read_body(response: http.client.HTTPResponse, out: IO[bytes], limit: int, job: Job) -> Answer:
    kept, truncated = 0, False
    while True:
        chunk = response.read1(CHUNK)  # what has come: a trickle still reaches the cancel check
        if not chunk:
            break
        room = limit - kept
        out.write(chunk[:room])
        kept += min(room, len(chunk))
        if len(chunk) > room:
            truncated = True
            break  # the rest is not read: it would only be thrown away
        job.progress(0, detail=f"received {kept // 1024} KB")  # reads the cancel flag
    content_type = response.getheader("Content-Type") or ""
    return Answer(response.status, response.reason, content_type[:200], kept, truncated)


def _once(
    job: Job, target: Target, request: tuple[str, bytes | None, dict[str, str]], out: IO[bytes]
) -> tuple[Answer, str | None]:
    """One request: the answer, and where a redirect points (None if it is not one)."""
    method, body, headers = request
    timeout = float(job.fields.get("timeout") or DEFAULT_TIMEOUT_S)
    kind = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    conn = kind(target, timeout)
    sent = False
    try:
        conn.request(method, target.path, body=body, headers=headers)
        sent = True
        response = conn.getresponse()
        location = response.getheader("Location") if response.status in REDIRECTS else None
        answer = _read_body(response, out, job.settings.http_body_bytes, job)
    except ssl.SSLCertVerificationError as exc:
        raise TaskFailed(
            f"{target.host}'s certificate is not trusted ({exc.verify_message})"
        ) from None
    except http.client.InvalidURL as exc:
        raise TaskFailed(f"field 'url': {exc}") from None
    except (OSError, http.client.HTTPException) as exc:
        if sent and method == "POST":
            raise TaskFailed(
                f"no whole answer from {target.host}:{target.port} after the POST was sent "
                f"({exc}); not sent again, as the server may have acted on it"
            ) from None
        raise Retryable(
            f"{target.host}:{target.port} could not be reached ({exc}); will try again"
        ) from exc
    finally:
        conn.close()
    return answer, location


def call(job: Job, out_path: Path) -> Answer:
    """The request, redirects followed within the allow-list (credentials go no further than
    the host they were given for, and never from https to http); the final answer."""
    allowed = job.settings.http_allowed_hosts
    url = str(job.fields["url"])
    method = str(job.fields.get("method") or "GET")
    raw = job.fields.get("body")
    body = str(raw).encode("utf-8") if method == "POST" and raw is not None else None
    headers = headers_of(job)
    if body is not None and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = str(job.fields.get("content-type") or "application/json")
    first = check(url, allowed)
    target = first
    for _ in range(MAX_REDIRECTS + 1):
        with open(out_path, "wb") as out:
            answer, location = _once(job, target, (method, body, headers), out)
        if location is None:
            return answer
        url = urljoin(url, location)
        if answer.status == 303 or (answer.status in (301, 302) and method == "POST"):
            method, body = "GET", None
            headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        try:
            target = check(url, allowed)
        except TaskFailed as exc:
            raise TaskFailed(f"a redirect to {url!r} leaves the allowed hosts: {exc}") from None
        if first.scheme == "https" and target.scheme == "http":
            raise TaskFailed(f"a redirect to {url!r} leaves https for plain http; not followed")
        if (target.host, target.port) != (first.host, first.port):
            headers = {k: v for k, v in headers.items() if k.lower() not in CREDENTIALS}
    raise TaskFailed(f"more than {MAX_REDIRECTS} redirects, the last to {url!r}")


def _outcome(answer: Answer, output: Path) -> dict[str, Any]:
    """The file's fields for a kept answer: SUCCESS for a 2xx, else FAILURE naming it."""
    if not 200 <= answer.status < 300:
        raise TaskFailed(
            f"the server answered {answer.status} {answer.reason}; its body is in {output}"
        )
    return {
        "http-status": answer.status,
        "content-type": answer.content_type,
        "output": str(output),
        "body-bytes": answer.kept,
        "body-truncated": answer.truncated,
        "tmp-space": None,
    }


@app.task(base=TaskdTask, name="tasks.httpcall.run")
def run(job: Job) -> dict[str, Any]:
    stem = pack.safe_name(str(job.fields.get("description") or ""), job.task_id)
    with job.work_dir() as tmp:
        job.progress(0, force=True, **{"tmp-space": str(tmp)})
        body_file = tmp / f"{job.job_id}.body"
        answer = call(job, body_file)
        if 500 <= answer.status < 600:  # nothing to keep: tried again
            raise Retryable(f"the server answered {answer.status} {answer.reason}; will try again")
        output = pack.publish_download(job.settings, job.user_id, body_file, stem, ".body")
        return _outcome(answer, output)
