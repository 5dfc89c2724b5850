"""Sending one message over SMTP, and telling passing failures (retry) from permanent ones.

`TASKD_SMTP_URL`: `smtp://[user:pass@]host[:port][?starttls=true]` or `smtps://...`, with optional
`timeout=<seconds>` and `cafile=<path>` (a CA to trust, for a server with its own certificate).
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlparse

from tasks.errors import TaskFailed

log = logging.getLogger(__name__)

TRUE = ("1", "true", "yes", "on")
NO_SMTPUTF8 = (
    "not sent: the address has non-ASCII characters and the SMTP server does not offer "
    "SMTPUTF8; give an ASCII address for this recipient, or a server that offers SMTPUTF8"
)


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    implicit_tls: bool
    starttls: bool
    user: str | None
    password: str | None
    timeout: float
    cafile: str | None

    @classmethod
    def from_url(cls, url: str, timeout: float) -> SmtpTarget:
        parsed = urlparse(url)
        if parsed.scheme not in ("smtp", "smtps") or not parsed.hostname:
            raise TaskFailed(
                f"TASKD_SMTP_URL {parsed.scheme}://{parsed.hostname or ''}... is not an SMTP URL; "
                "write smtp://host:25, smtp://user:pass@host:587?starttls=true or smtps://host:465"
            )
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        implicit = parsed.scheme == "smtps"
        return cls(
            host=parsed.hostname,
            port=parsed.port or (465 if implicit else 25),
            implicit_tls=implicit,
            starttls=query.get("starttls", "").lower() in TRUE,
            user=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
            timeout=float(query.get("timeout", timeout)),
            cafile=query.get("cafile"),
        )

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cafile)


@dataclass(frozen=True)
class Outcome:
    sent: tuple[str, ...]
    later: dict[str, str]  # recipient -> the 4xx answer: try again
    refused: dict[str, str]  # recipient -> the 5xx answer: never
    unsendable: dict[str, str] = field(default_factory=dict)  # recipient -> why it was not tried


class SmtpUnavailable(Exception):
    """The server could not be reached or answered 4xx for the whole message: try again."""


def _answer(code: int, message: bytes | str) -> str:
    text = message.decode(errors="replace") if isinstance(message, bytes) else str(message)
    return f"{code} {text}".strip()


def _connect(target: SmtpTarget) -> smtplib.SMTP:
    if target.implicit_tls:
        return smtplib.SMTP_SSL(
            target.host, target.port, timeout=target.timeout, context=target.tls_context()
        )
    client = smtplib.SMTP(target.host, target.port, timeout=target.timeout)
    if target.starttls:
        client.starttls(context=target.tls_context())
    return client


def _ascii_form(address: str) -> str | None:
    """An address a server without SMTPUTF8 takes: as it is, or its domain in IDNA (punycode).

    None when the local part is not ASCII: only SMTPUTF8 can carry it.
    """
    if address.isascii():
        return address
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        return None
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        log.info("notify address %r: its domain has no IDNA form", address)
        return None


@dataclass(frozen=True)
class _Envelope:
    sender: str
    to: dict[str, str]  # address as the server gets it -> as the task named it
    unsendable: dict[str, str]
    options: tuple[str, ...]


def _envelope(client: smtplib.SMTP, sender: str, recipients: list[str]) -> _Envelope:
    """The envelope this server can take: SMTPUTF8 when it offers it and an address needs it."""
    client.ehlo_or_helo_if_needed()
    if all(a.isascii() for a in (sender, *recipients)):
        return _Envelope(sender, {r: r for r in recipients}, {}, ())
    if client.has_extn("smtputf8"):
        return _Envelope(sender, {r: r for r in recipients}, {}, ("SMTPUTF8",))
    wire_sender = _ascii_form(sender)
    if wire_sender is None:
        raise TaskFailed(
            f"TASKD_MAIL_FROM {sender!r} has non-ASCII characters and the SMTP server does not "
            "offer SMTPUTF8; set an ASCII sender address"
        )
    to: dict[str, str] = {}
    unsendable: dict[str, str] = {}
    for recipient in recipients:
        wire = _ascii_form(recipient)
        if wire is None:
            unsendable[recipient] = NO_SMTPUTF8
        else:
            to[wire] = recipient
    return _Envelope(wire_sender, to, unsendable, ())


def send(
    target: SmtpTarget,
    sender: str,
    recipients: list[str],
    message: bytes,
    accepted: Callable[[Outcome], None] | None = None,
) -> Outcome:
    """Send to each recipient; say who got it, who may get it later, who never will.

    An address with non-ASCII characters goes out with SMTPUTF8 when the server offers it;
    otherwise it is named in `Outcome.unsendable` and the others still get the mail.
    `accepted` is called with the outcome the moment the server has answered the message,
    before the goodbye: what must be recorded once a mail is out waits on no further round trip.
    """
    try:
        client = _connect(target)
    except (OSError, smtplib.SMTPException) as exc:
        raise SmtpUnavailable(
            f"cannot reach SMTP server {target.host}:{target.port}: {exc}"
        ) from exc
    try:
        outcome = _outcome(*_converse(client, target, sender, recipients, message))
        if accepted is not None:
            accepted(outcome)
    finally:
        _close(client)
    return outcome


def _outcome(envelope: _Envelope, refused: dict[str, tuple[int, bytes]]) -> Outcome:
    named = {envelope.to.get(wire, wire): answer for wire, answer in refused.items()}
    later = {r: _answer(c, m) for r, (c, m) in named.items() if 400 <= c < 500}
    never = {r: _answer(c, m) for r, (c, m) in named.items() if not 400 <= c < 500}
    sent = tuple(r for r in envelope.to.values() if r not in named)
    return Outcome(sent, later, never, envelope.unsendable)


def _converse(
    client: smtplib.SMTP, target: SmtpTarget, sender: str, recipients: list[str], message: bytes
) -> tuple[_Envelope, dict[str, tuple[int, bytes]]]:
    try:
        if target.user:
            client.login(target.user, target.password or "")
        envelope = _envelope(client, sender, recipients)
        if not envelope.to:
            return envelope, {}
        options = list(envelope.options)
        return envelope, client.sendmail(envelope.sender, list(envelope.to), message, options)
    except smtplib.SMTPRecipientsRefused as exc:
        return envelope, exc.recipients  # every one refused: reported per address, below
    except smtplib.SMTPAuthenticationError as exc:
        raise TaskFailed(
            f"SMTP server refused the login ({_answer(exc.smtp_code, exc.smtp_error)}); "
            "check the user and password in TASKD_SMTP_URL"
        ) from exc
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
        answer = _answer(exc.smtp_code, exc.smtp_error)
        if 400 <= exc.smtp_code < 500:
            raise SmtpUnavailable(f"SMTP server answered {answer}") from exc
        raise TaskFailed(f"SMTP server refused the mail: {answer}") from exc
    except (TimeoutError, OSError, smtplib.SMTPException) as exc:
        raise SmtpUnavailable(f"SMTP conversation failed: {exc}") from exc


def _close(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (OSError, smtplib.SMTPException) as exc:
        log.debug("SMTP QUIT failed (%s); closing the connection", exc)
        client.close()
