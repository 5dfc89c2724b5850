"""HTTP's rules of where a task may call (tasks/httpcall.py): listed hosts only, and inside the
network only at an address ops listed themselves; the headers a task may not set."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskd.settings import HTTP_SCHEMA_DIR, Settings
from taskd.tasktypes import load_types
from tasks import httpcall
from tasks.errors import Retryable, TaskFailed


def _resolving(*addresses: str) -> Any:
    def resolve(host: str, port: int, type: int = 0) -> list[Any]:
        family = socket.AF_INET6 if ":" in addresses[0] else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    return resolve


PUBLIC = _resolving("93.184.216.34")


def test_a_listed_host_at_a_public_address_is_called() -> None:
    target = httpcall.check("https://API.example.com/v1/run?x=1", ("api.example.com",), PUBLIC)
    assert (target.scheme, target.host, target.port) == ("https", "api.example.com", 443)
    assert (target.path, target.address) == ("/v1/run?x=1", "93.184.216.34")


@pytest.mark.parametrize(
    ("url", "allowed", "says"),
    [
        ("https://evil.example.org/", ("api.example.com",), "is not in TASKD_HTTP_ALLOWED_HOSTS"),
        ("http://api.example.com:8080/", ("api.example.com:80",), "api.example.com:8080 is not in"),
        ("ftp://api.example.com/", ("api.example.com",), "is not an http:// or https:// URL"),
        ("http:///nohost", ("api.example.com",), "is not an http:// or https:// URL"),
        ("http://api.example.com:x/", ("api.example.com",), "port that is not a number"),
    ],
)
def test_anything_else_is_refused_naming_the_rule(
    url: str, allowed: tuple[str, ...], says: str
) -> None:
    with pytest.raises(TaskFailed, match="field 'url'") as caught:
        httpcall.check(url, allowed, PUBLIC)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    "inside", ["127.0.0.1", "10.0.0.5", "192.168.1.9", "169.254.169.254", "::1"]
)
def test_a_listed_name_inside_the_network_is_refused_unless_its_address_is_listed(
    inside: str,
) -> None:
    resolve = _resolving(inside)
    with pytest.raises(TaskFailed, match="an address inside the network"):
        httpcall.check("http://api.example.com/", ("api.example.com",), resolve)
    listed = ("api.example.com", f"[{inside}]" if ":" in inside else inside)
    assert httpcall.check("http://api.example.com/", listed, resolve).address == inside


def test_a_listed_address_and_port_is_called_on_that_port_alone() -> None:
    loop = _resolving("127.0.0.1")
    assert httpcall.check("http://127.0.0.1:8080/x", ("127.0.0.1:8080",), loop).port == 8080
    with pytest.raises(TaskFailed, match="127.0.0.1:8081 is not in"):
        httpcall.check("http://127.0.0.1:8081/x", ("127.0.0.1:8080",), loop)


def test_a_name_that_cannot_be_looked_up_is_tried_again_later() -> None:
    def failing(host: str, port: int, type: int = 0) -> list[Any]:
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    with pytest.raises(Retryable, match="cannot be looked up now"):
        httpcall.check("https://api.example.com/", ("api.example.com",), failing)


@settings(database=None, deadline=None)
@given(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){1,2}", fullmatch=True), st.integers(1, 65535)
)
def test_no_host_that_is_not_listed_is_ever_called(host: str, port: int) -> None:
    allowed = ("api.example.com", "127.0.0.1:8080")
    if host == "api.example.com":
        return
    with pytest.raises(TaskFailed, match="is not in TASKD_HTTP_ALLOWED_HOSTS"):
        httpcall.check(f"http://{host}:{port}/", allowed, PUBLIC)


class _Job:
    def __init__(self, headers: dict[str, str]) -> None:
        self.fields = {"headers": headers}


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "other"},
        {"content-length": "5"},
        {"X-A": "a\r\nInjected: 1"},
        {"Host ": "evil.internal"},
        {"Transfer-Encoding\t": "chunked"},
        {"X-A": "a\rb"},
        {"X-A": "a\x00b"},
        {"": "x"},
    ],
)
def test_headers_taskd_sets_or_that_break_lines_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(TaskFailed, match="field 'headers'"):
        httpcall.headers_of(_Job(headers))  # type: ignore[arg-type]


def test_the_type_is_on_only_with_allowed_hosts(tmp_path: Any) -> None:
    off = Settings.from_env({"TASKD_DATA_ROOT": str(tmp_path)})
    on = Settings.from_env(
        {
            "TASKD_DATA_ROOT": str(tmp_path),
            "TASKD_HTTP_ALLOWED_HOSTS": "API.example.com, b.org:8443",
        }
    )
    assert "HTTP" not in load_types(off.type_dirs)
    assert "HTTP" in load_types(on.type_dirs) and HTTP_SCHEMA_DIR in on.type_dirs
    assert on.http_allowed_hosts == ("api.example.com", "b.org:8443")


@pytest.mark.parametrize(
    "inside",
    [
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::1",
        "::a9fe:a9fe",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
    ],
)
def test_an_inside_ipv4_address_carried_in_ipv6_is_inside(inside: str) -> None:
    assert not httpcall.public(inside)
    with pytest.raises(TaskFailed, match="inside the network"):
        httpcall.check("http://api.example.com/", ("api.example.com",), _resolving(inside))


def test_public_addresses_stay_public() -> None:
    assert httpcall.public("93.184.216.34") and httpcall.public("2606:2800:220:1::1")
    assert httpcall.public("64:ff9b::5db8:d822")  # NAT64 of a public address


def test_a_name_that_does_not_exist_fails_at_once() -> None:
    def missing(host: str, port: int, type: int = 0) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(TaskFailed, match="no such host api.example.com"):
        httpcall.check("https://api.example.com/", ("api.example.com",), missing)


@pytest.mark.parametrize("entry", ["fd00::5", "http://a.example", "a.example:port", "u@a.example"])
def test_an_allowed_host_written_wrong_is_refused_at_start(tmp_path: Any, entry: str) -> None:
    from taskd.settings import SettingsError

    with pytest.raises(SettingsError, match="TASKD_HTTP_ALLOWED_HOSTS"):
        Settings.from_env({"TASKD_DATA_ROOT": str(tmp_path), "TASKD_HTTP_ALLOWED_HOSTS": entry})


class _CallJob:
    def __init__(self, url: str, allowed: tuple[str, ...]) -> None:
        self.fields = {"url": url, "headers": {"Authorization": "Bearer t", "X-Keep": "y"}}
        self.settings = type("S", (), {"http_allowed_hosts": allowed})()


def _redirecting(monkeypatch: pytest.MonkeyPatch, hops: list[str]) -> list[dict[str, str]]:
    """`_once` answering each request with a redirect to the next of `hops`, then a 200; the
    headers each request carried."""
    sent: list[dict[str, str]] = []

    def once(job: Any, target: Any, request: Any, out: Any) -> Any:
        sent.append(dict(request[2]))
        nxt = hops[len(sent) - 1] if len(sent) <= len(hops) else None
        status = 302 if nxt else 200
        return httpcall.Answer(status, "", "text/plain", 0, False), nxt

    monkeypatch.setattr(httpcall, "_once", once)
    return sent


def test_credentials_go_no_further_than_their_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    sent = _redirecting(monkeypatch, ["http://127.0.0.1:1/again", "http://127.0.0.1:2/other"])
    job = _CallJob("http://127.0.0.1:1/start", ("127.0.0.1:1", "127.0.0.1:2"))
    assert httpcall.call(job, tmp_path / "body").status == 200  # type: ignore[arg-type]
    assert [("Authorization" in h, h["X-Keep"]) for h in sent] == [
        (True, "y"),
        (True, "y"),  # the same host and port: still its own
        (False, "y"),  # another one: not given the token
    ]


def test_a_redirect_from_https_to_plain_http_is_not_followed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    _redirecting(monkeypatch, ["http://127.0.0.1:1/plain"])
    job = _CallJob("https://127.0.0.1:1/start", ("127.0.0.1:1",))
    with pytest.raises(TaskFailed, match="leaves https for plain http"):
        httpcall.call(job, tmp_path / "body")  # type: ignore[arg-type]
