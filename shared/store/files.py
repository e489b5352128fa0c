"""OpenAI Files on the job store: uploads (a batch's JSONL input) and the output/error files batches write.

An upload is checked line by line as it is read from the request's spooled stream (one line in memory at a time,
never the whole file decoded), then read once to be stored. Lines are split on \\n only (a trailing \\r is
dropped): U+2028, U+2029 and U+0085 are legal inside JSON strings and stay inside their line.

Bounds, per deployment (one database): at most ``limits.max_files`` files and ``limits.max_file_storage_bytes``
bytes stored at once, counting uploads and the files batches write; an upload past either is refused (HTTP 429,
``storage_limit_exceeded``, not retried), a batch's own output/error file never is (its work is done). Each file
expires: ``expires_after`` on upload (OpenAI's ``{"anchor": "created_at", "seconds": 3600..2592000}``), else
``v1.file_expiry_hours`` (0: never); an expired file answers 404, is not listed nor counted, and the recovery loop
deletes it. Listings never load a file's content (the column is deferred).
"""

from __future__ import annotations

import io
import json
import uuid
from datetime import timedelta
from typing import IO, Any, Iterator

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from shared.errors import BadRequest, InstaBoostError, NotFound
from shared.resources import openai as resources
from shared.settings import Settings
from shared.store.tables import File, utcnow
from shared.validation import brief

FILE_PURPOSES = ("batch",)  # what POST /v1/files accepts; batch_output files are written by finalization
EXPIRES_AFTER_SECONDS = (3600, 30 * 24 * 3600)  # OpenAI's range for expires_after.seconds


class StorageFull(InstaBoostError):
    """The deployment's file store is at limits.max_files or limits.max_file_storage_bytes."""

    status = 429
    title = "File storage full"


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def key(value: Any) -> str | None:
    """Return value when it can be a stored id (a string of at most 64 printable characters), else None."""
    if isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable():
        return value
    return None


# -- JSONL ------------------------------------------------------------------------------------------------------


def jsonl_lines(source: IO[bytes] | bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, line without its \\n or \\r\\n) of a JSONL stream or bytes, split on \\n only."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    for n, raw in enumerate(stream, 1):
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        yield n, raw


def parse_line(n: int, raw: bytes) -> Any:
    """Return line n's JSON value, or None for a blank line; BadRequest naming the line when it is not UTF-8 JSON."""
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"line {n} of the file is not UTF-8 text (its byte {exc.start + 1}); a batch input is "
                         "JSONL", field="file") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"line {n} of the file is not valid JSON ({str(exc)[:120]}); each line of a batch input is "
                         "one JSON object", field="file") from None


def check_jsonl(source: IO[bytes] | bytes, max_lines: int) -> int:
    """Return the number of request lines of a batch input; BadRequest when it is not JSONL of objects."""
    count = 0
    for n, raw in jsonl_lines(source):
        obj = parse_line(n, raw)
        if obj is None:
            continue
        if not isinstance(obj, dict):
            raise BadRequest(f"line {n} of the file is {type(obj).__name__}, not a JSON object", field="file")
        count += 1
        if count > max_lines:
            raise BadRequest(f"the file holds more than {max_lines} requests (limits.max_queued_jobs); split it",
                             field="file")
    if count == 0:
        raise BadRequest("the file holds no request lines; a batch input is JSONL, one request per line",
                         field="file")
    return count


# -- storing ----------------------------------------------------------------------------------------------------


def _alive():
    return File.expires_at.is_(None) | (File.expires_at > utcnow())


def expires_after_seconds(anchor: str | None, seconds: str | None) -> int | None:
    """Return an upload's expires_after.seconds (multipart fields expires_after[anchor], [seconds]), or None."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise BadRequest(f"expires_after[anchor] must be created_at; got {brief(anchor)}", field="expires_after.anchor")
    lo, hi = EXPIRES_AFTER_SECONDS
    try:
        value = int(str(seconds))
    except ValueError:
        value = -1
    if not lo <= value <= hi:
        raise BadRequest(f"expires_after[seconds] must be an integer from {lo} (1 hour) to {hi} (30 days); got "
                         f"{brief(seconds)}", field="expires_after.seconds")
    return value


def check_room(session: Session, size: int, settings: Settings) -> None:
    """Raise StorageFull when one more file of size bytes would pass the deployment's file bounds."""
    count, total = session.execute(select(func.count(), func.coalesce(func.sum(File.bytes), 0)).where(_alive())).one()
    max_files, max_bytes = settings.limits.max_files, settings.limits.max_file_storage_bytes
    if count + 1 > max_files:
        raise StorageFull(f"{count} files are stored, the limit (limits.max_files) is {max_files}: delete files you "
                          "no longer need (DELETE /v1/files/<id>), or upload again once older files expire",
                          field="file")
    if total + size > max_bytes:
        raise StorageFull(f"the stored files hold {total} bytes; this one ({size} bytes) would pass the limit of "
                          f"{max_bytes} (limits.max_file_storage_bytes): delete files you no longer need "
                          "(DELETE /v1/files/<id>), or upload again once older files expire", field="file")


def create_file(session: Session, purpose: str, filename: str, stream: IO[bytes], *, settings: Settings,
                expires_after: int | None = None) -> File:
    """Store an uploaded file (purpose "batch": JSONL checked line by line as it streams); commit and return it."""
    if purpose not in FILE_PURPOSES:
        raise BadRequest(f"purpose must be one of {', '.join(FILE_PURPOSES)}; got {brief(purpose)} (this server "
                         "stores files for batches only)", field="purpose")
    stream.seek(0, io.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    check_room(session, size, settings)
    session.commit()
    check_jsonl(stream, settings.limits.max_queued_jobs)
    stream.seek(0)
    return store_file(session, purpose, filename, stream.read(), settings=settings, expires_after=expires_after)


def store_file(session: Session, purpose: str, filename: str, content: bytes, *, settings: Settings,
               expires_after: int | None = None, commit: bool = True) -> File:
    """Add a file (expiring after expires_after seconds, else v1.file_expiry_hours); commit unless told not to."""
    name = "".join(c for c in (filename or "upload.jsonl") if c.isprintable())[:255] or "upload.jsonl"
    now = utcnow()
    hours = settings.v1.file_expiry_hours
    expires = now + timedelta(seconds=expires_after) if expires_after else \
        now + timedelta(hours=hours) if hours > 0 else None
    f = File(id=new_id("file-"), purpose=purpose, filename=name, bytes=len(content), content=content, created_at=now,
             expires_at=expires)
    session.add(f)
    if commit:
        session.commit()
    else:
        session.flush()
    return f


# -- reading ----------------------------------------------------------------------------------------------------


def get_file(session: Session, file_id: Any, field: str = "file_id", hint: str = "") -> File:
    """Return a stored file that has not expired; NotFound otherwise."""
    f = session.scalar(select(File).where(File.id == key(file_id), _alive())) if key(file_id) else None
    if f is None:
        raise NotFound(f"no file with id {brief(file_id)}{hint}", field=field)
    return f


def file_to_dict(f: File) -> dict[str, Any]:
    """Return OpenAI's file object."""
    return resources.File(**{
        "id": f.id, "object": "file", "bytes": f.bytes, "created_at": int(f.created_at.timestamp()),
        "filename": f.filename, "purpose": f.purpose, "status": "processed",
        "expires_at": int(f.expires_at.timestamp()) if f.expires_at is not None else None,
        "status_details": None}).dump()


def delete_file(session: Session, file_id: str) -> dict[str, Any]:
    f = get_file(session, file_id)
    session.execute(delete(File).where(File.id == f.id))
    session.commit()
    return resources.FileDeleted(id=f.id, object="file", deleted=True).dump()


def delete_expired(session: Session) -> list[str]:
    """Delete the files past their expiry (for the recovery loop); return their ids."""
    ids = list(session.scalars(delete(File).where(File.expires_at <= utcnow()).returning(File.id)))
    session.commit()
    return ids


def list_files(session: Session, purpose: str | None, limit: int, after: str | None) -> dict[str, Any]:
    """List files newest first, without loading any file's content."""
    stmt = select(File).where(_alive()).order_by(File.created_at.desc(), File.id.desc())
    if purpose:
        stmt = stmt.where(File.purpose == purpose)
    if after:
        anchor = session.get(File, key(after)) if key(after) else None
        if anchor is not None:
            stmt = stmt.where((File.created_at < anchor.created_at) |
                              ((File.created_at == anchor.created_at) & (File.id < anchor.id)))
    rows = list(session.scalars(stmt.limit(limit + 1)))
    return page([file_to_dict(f) for f in rows[:limit]], len(rows) > limit)


def page(data: list[dict], has_more: bool) -> dict[str, Any]:
    """Return an OpenAI list object."""
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}
