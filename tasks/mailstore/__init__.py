"""Reading the mail archive: pure iteration over partitions and messages, and RETRMS matching.

`MailStore` is the interface a site can implement; `FileMailStore` is the reference store over
`.eml` day folders and `.mbox` day files.  `search` runs a `Criterion` over a store.
"""

from tasks.mailstore.base import (
    InvalidName,
    MailStore,
    MailStoreError,
    MailStoreUnavailable,
    MailSummary,
    Message,
    Partition,
    UnknownGroup,
    UnknownMail,
)
from tasks.mailstore.criteria import Criterion, CriterionError, matches, select_partitions
from tasks.mailstore.decode import decode_address_header, decode_header, parse_date
from tasks.mailstore.mbox import split_mbox
from tasks.mailstore.search import Progress, search
from tasks.mailstore.store import FileMailStore

__all__ = [
    "Criterion",
    "CriterionError",
    "FileMailStore",
    "InvalidName",
    "MailStore",
    "MailStoreError",
    "MailStoreUnavailable",
    "MailSummary",
    "Message",
    "Partition",
    "Progress",
    "UnknownGroup",
    "UnknownMail",
    "decode_address_header",
    "decode_header",
    "matches",
    "parse_date",
    "search",
    "select_partitions",
    "split_mbox",
]
