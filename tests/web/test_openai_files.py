"""OpenAI Files: listings never load content, uploads are checked as they stream, the store is bounded, files
expire. Real PostgreSQL and Redis, no worker.
"""

from __future__ import annotations

import io
import json
import tracemalloc
from datetime import timedelta

from sqlalchemy import event, select, update
from sqlalchemy.engine import Engine

from shared.db import session_scope
from shared.store import files
from shared.store.tables import File, utcnow
from tests.fixtures.store import DEFAULT_MODEL, make_test_app

AUTH = {"Authorization": "Bearer any"}  # a multipart POST without it is refused as a possible cross-site form


def jsonl(n: int, pad: int = 0) -> bytes:
    return "".join(json.dumps({"custom_id": f"r{k}", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi" + "x" * pad}]}}) + "\n"
        for k in range(n)).encode()


def upload(web, data: bytes, **form):
    return web.post("/v1/files", data={"purpose": "batch", "file": (io.BytesIO(data), "in.jsonl"), **form},
                    content_type="multipart/form-data", headers=AUTH)


def test_listing_files_never_loads_their_content(app):
    web = app.test_client()
    ids = [upload(web, jsonl(20, pad=1000)).get_json()["id"] for _ in range(3)]
    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        if "FROM files" in statement:
            statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        listed = web.get("/v1/files").get_json()
        one = web.get(f"/v1/files/{ids[0]}").get_json()
        assert statements and not any("files.content" in s for s in statements), statements
        assert web.get(f"/v1/files/{ids[0]}/content").get_data() == jsonl(20, pad=1000)  # loaded when asked for
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert [f["id"] for f in listed["data"]] == ids[::-1] and one["bytes"] == len(jsonl(20, pad=1000))
    assert any("files.content" in s for s in statements)


def test_an_upload_is_checked_line_by_line_without_decoding_it_whole():
    """check_jsonl reads the upload's stream a line at a time: its memory does not grow with the file."""
    data = jsonl(60_000)  # ~8 MB
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        assert files.check_jsonl(io.BytesIO(data), 10**6) == 60_000
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < len(data) / 10, (peak, len(data))


def test_the_file_store_is_bounded_and_says_how_to_make_room(clean_db, redis_namespace):
    app = make_test_app(clean_db, redis_namespace, SETTINGS={"limits.max_files": 2,
                                                             "limits.max_file_storage_bytes": 1000})
    web = app.test_client()
    small = jsonl(1)
    first, second = (upload(web, small).get_json()["id"] for _ in range(2))
    full = upload(web, small)
    assert full.status_code == 429 and full.headers["x-should-retry"] == "false"  # retrying cannot help
    error = full.get_json()["error"]
    assert error["code"] == "storage_limit_exceeded" and "limits.max_files" in error["message"]
    assert "DELETE /v1/files" in error["message"]
    assert web.delete(f"/v1/files/{second}", headers=AUTH).get_json()["deleted"]
    big = upload(web, jsonl(1, pad=1000 - len(small)))  # one more file, but past the bytes bound
    assert big.status_code == 429 and "limits.max_file_storage_bytes" in big.get_json()["error"]["message"]
    assert upload(web, small).status_code == 200
    assert [f["id"] for f in web.get("/v1/files").get_json()["data"]][-1] == first


def test_files_expire_answer_404_and_the_recovery_loop_deletes_them(clean_db, redis_namespace):
    from shared.settings import load_settings
    from worker.jobs.recovery import JobRecovery

    web = make_test_app(clean_db, redis_namespace).test_client()
    default = upload(web, jsonl(1)).get_json()
    assert default["expires_at"] - default["created_at"] == 30 * 24 * 3600  # v1.file_expiry_hours: 720
    short = upload(web, jsonl(1), **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"})
    assert short.get_json()["expires_at"] - short.get_json()["created_at"] == 3600
    bad = upload(web, jsonl(1), **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "10"})
    assert bad.status_code == 400 and bad.get_json()["error"]["param"] == "expires_after.seconds"
    gone = short.get_json()["id"]
    with session_scope(clean_db) as s:
        s.execute(update(File).where(File.id == gone).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert web.get(f"/v1/files/{gone}").status_code == 404
    assert web.get(f"/v1/files/{gone}/content").status_code == 404
    assert [f["id"] for f in web.get("/v1/files").get_json()["data"]] == [default["id"]]
    batch = web.post("/v1/batches", json={"input_file_id": gone, "endpoint": "/v1/chat/completions",
                                          "completion_window": "24h"})
    assert batch.status_code == 404 and batch.get_json()["error"]["param"] == "input_file_id"
    settings = load_settings(overrides={"database.url": clean_db, "redis.namespace": redis_namespace})
    assert JobRecovery(settings, db_url=clean_db).run_pass()["files"] == [gone]
    with session_scope(clean_db) as s:
        assert list(s.scalars(select(File.id))) == [default["id"]]
