"""Walk a message's MIME tree for its text and its attachments; never raises.

`email` (with the lenient compat32 policy) only splits the tree and undoes transfer encodings;
charsets are decoded by `charsets`, which knows the labels `email` does not.
"""

from __future__ import annotations

import html
import logging
import re
from email.message import Message as EmailMessage
from email.parser import BytesParser
from email.policy import compat32

from tasks.mailstore.charsets import decode_declared
from tasks.mailstore.headers import BOM

log = logging.getLogger(__name__)

_NON_BODY_HTML = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_ATTACHMENT_TYPES = frozenset({"application", "audio", "video"})
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse(raw: bytes) -> EmailMessage | None:
    """The MIME tree of a raw message, or None if even the lenient parser gives up."""
    if raw.startswith(BOM):
        raw = raw[len(BOM) :]
    try:
        return BytesParser(policy=compat32).parsebytes(raw)
    except Exception:  # a message that cannot be walked is still listed and packed
        log.debug("cannot parse MIME structure", exc_info=True)
        return None


def html_to_text(markup: str) -> str:
    """Visible text of an HTML part, good enough to search in."""
    return html.unescape(_TAG.sub(" ", _NON_BODY_HTML.sub(" ", markup)))


def is_attachment(part: EmailMessage) -> bool:
    """Whether a leaf part is an attachment rather than something to read inline."""
    disposition = part.get_content_disposition()
    if disposition == "attachment":
        return True
    if disposition == "inline":
        return False
    if part.get_filename() or part.get_param("name"):
        return True
    return part.get_content_maintype() in _ATTACHMENT_TYPES


def _leaves(tree: EmailMessage) -> list[EmailMessage]:
    return [part for part in tree.walk() if not part.is_multipart()]


def part_text(part: EmailMessage) -> str:
    """The readable text of a leaf part; "" for an attachment or a part that is not text."""
    try:
        if part.get_content_maintype() != "text" or is_attachment(part):
            return ""
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            return ""
        text = _SURROGATE.sub("\ufffd", decode_declared(payload, part.get_content_charset()))
        return html_to_text(text) if part.get_content_subtype() == "html" else text
    except Exception:  # a broken part must not hide the others
        log.debug("cannot decode a text part", exc_info=True)
        return ""


def body_text(tree: EmailMessage | None) -> str:
    """Decoded text of the text parts that are not attachments, one after another."""
    if tree is None:
        return ""
    try:
        leaves = _leaves(tree)
    except Exception:  # a tree too broken to walk has no text to offer
        log.debug("cannot walk MIME tree", exc_info=True)
        return ""
    return "\n".join(text for text in map(part_text, leaves) if text)


def has_attachment(tree: EmailMessage | None) -> bool:
    if tree is None:
        return False
    try:
        return any(is_attachment(part) for part in _leaves(tree))
    except Exception:  # as in body_text
        log.debug("cannot inspect parts", exc_info=True)
        return False
