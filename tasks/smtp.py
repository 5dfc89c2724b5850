"""Sending one message over SMTP, and telling passing failures (retry) from permanent ones.

`TASKD_SMTP_URL`: `smtp://[user:pass@]host[:port][?starttls=true]` or `smtps://...`, with optional
`timeout=<seconds>` and `cafile=<path>` (a CA to trust, for a server with its own certificate).
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlparse

from tasks.errors import TaskFailed

TRUE = ("1", "true", "yes", "on")


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


def send(target: SmtpTarget, sender: str, recipients: list[str], message: bytes) -> Outcome:
    """Send to each recipient; say who got it, who may get it later, who never will."""
    try:
        client = _connect(target)
    except (OSError, smtplib.SMTPException) as exc:
        raise SmtpUnavailable(
            f"cannot reach SMTP server {target.host}:{target.port}: {exc}"
        ) from exc
    try:
        if target.user:
            client.login(target.user, target.password or "")
        refused = client.sendmail(sender, recipients, message)
    except smtplib.SMTPRecipientsRefused as exc:
        refused = exc.recipients
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
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()
    later = {r: _answer(c, m) for r, (c, m) in refused.items() if 400 <= c < 500}
    never = {r: _answer(c, m) for r, (c, m) in refused.items() if not 400 <= c < 500}
    sent = tuple(r for r in recipients if r not in refused)
    return Outcome(sent, later, never)
