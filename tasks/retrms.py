"""RETRMS: search the archive by criteria, write the result set, and pack it if asked.

Thin: it validates the criterion, streams `mailstore.search` into the result set, and reports
progress as the share of bytes scanned (the first half when the task also packs).
"""

from __future__ import annotations

from typing import Any

from tasks import results
from tasks.app import app
from tasks.base import Job, TaskdTask
from tasks.errors import Retryable, TaskFailed
from tasks.mailstore import (
    Criterion,
    CriterionError,
    FileMailStore,
    MailStoreUnavailable,
    search,
)
from tasks.packms import pack_to_download, published_before
from tasks.progress import megabytes, utc_now


def criterion_of(job: Job) -> Criterion:
    try:
        return Criterion.from_json(job.fields.get("criterion"))
    except CriterionError as exc:
        where = f"criterion.{exc.field}" if exc.field else "criterion"
        raise TaskFailed(f"field {where!r}: {exc}") from None


def run_search(job: Job, criterion: Criterion, share: float, steps: int) -> tuple[int, Any]:
    """Search and publish the result set; returns (matches, the result set's path)."""
    settings = job.settings
    retrieve_id = str(job.fields["retrieve-id"])
    target = results.result_path(settings, job.user_id, retrieve_id)
    store = FileMailStore(settings.mail_db_path, settings.mail_index_path)

    def report(done: int, total: int) -> None:
        detail = megabytes(done, total, "searching")
        job.progress(share * done / total if total else share, detail=detail, step=1, steps=steps)

    header = {
        "retrieve-id": retrieve_id,
        "user-id": job.user_id,
        "task-id": job.task_id,
        "job-id": job.job_id,
        "created-at": utc_now(),
        "criterion": criterion.to_json(),
    }
    owner = criterion.user or None
    try:
        found = (m.to_json() for m in search(store, criterion, report, owner=owner))
        count = results.write_result_set(target, job.tmp_space, header, found, settings.output_mode)
    except CriterionError as exc:
        raise TaskFailed(f"field 'criterion.{exc.field}': {exc}") from None
    except MailStoreUnavailable as exc:
        raise Retryable(f"the mail archive cannot be read now ({exc}); will try again") from exc
    return count, target


def done_before(job: Job, wants_pack: bool) -> dict[str, Any] | None:
    """What an earlier delivery of this very job already published, if it finished its work."""
    target = results.result_path(job.settings, job.user_id, str(job.fields["retrieve-id"]))
    try:
        with open(target, encoding="utf-8") as handle:
            head = handle.read(4096)
    except FileNotFoundError:
        return None  # no result set yet: the normal first delivery
    if f'"job-id": "{job.job_id}"' not in head:
        return None
    result_set = results.ResultSet(target, str(job.fields["retrieve-id"]), job.user_id)
    out: dict[str, Any] = {"matched": int(result_set.header.get("count", 0))}
    if wants_pack and out["matched"]:
        output = published_before(job.settings, job)
        if output is None:
            return None
        out["output"] = str(output)
    return out


@app.task(base=TaskdTask, name="tasks.retrms.run")
def run(job: Job) -> dict[str, Any]:
    criterion = criterion_of(job)
    wants_pack = bool(job.fields.get("pack"))
    earlier = done_before(job, wants_pack)
    if earlier is not None:
        return earlier
    share = 50.0 if wants_pack else 99.0
    steps = 2 if wants_pack else 1
    with job.work_dir():
        count, target = run_search(job, criterion, share, steps)
        job.progress(share, force=True, matched=count)
        out: dict[str, Any] = {"matched": count}
        if wants_pack and count:
            result_set = results.ResultSet(target, str(job.fields["retrieve-id"]), job.user_id)
            output = pack_to_download(
                job,
                result_set.mails,
                [],
                lambda done, total: job.progress(
                    share + 49 * done / max(total, 1),
                    detail=megabytes(done, total, "packing"),
                    step=2,
                    steps=2,
                ),
            )
            out["output"] = str(output)
    return out
