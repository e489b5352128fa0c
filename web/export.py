"""CSV export of runs, streamed in constant memory, with spreadsheet formula injection neutralized."""

from __future__ import annotations

import csv
import io
from typing import Any, Iterable, Iterator, Mapping

from flask import Blueprint, Response, request, stream_with_context

from shared.csvsafe import neutralize
from shared.store import export, queries
from web.context import db, services

bp = Blueprint("export", __name__)

FLUSH_BYTES = 64 * 1024


def csv_chunks(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> Iterator[str]:
    """Yield CSV text in chunks of about FLUSH_BYTES."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for row in rows:
        writer.writerow([neutralize(c) for c in row])
        if buf.tell() >= FLUSH_BYTES:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def csv_response(filters: Mapping[str, Any]) -> Response:
    """Return a streamed CSV of the runs matching filters (validated before the first byte)."""
    clean = queries.clean_filters("runs", filters)
    maker = services().sessionmaker

    def generate() -> Iterator[str]:
        # Its own session: it lives as long as the stream, not as long as the view.
        session = maker()
        try:
            yield from csv_chunks(export.EXPORT_COLUMNS, export.iter_runs_for_export(session, clean))
        finally:
            session.close()

    resp = Response(stream_with_context(generate()), mimetype="text/csv")
    resp.headers["Content-Disposition"] = 'attachment; filename="instaboost-runs.csv"'
    return resp


def jobs_csv_response(filters: Mapping[str, Any]) -> Response:
    """Return the wide CSV: one row per job with the prototype's comparison columns (validated before the first byte).

    The header (every extra variant's columns) and the rows come from one snapshot of the database, so a run
    stored meanwhile cannot show up in a row without its column; rows are read WIDE_BATCH jobs at a time.
    """
    clean = export.clean_wide_filters(filters)
    session = services().sessionmaker()
    try:
        export.snapshot(session)
        columns = export.wide_columns(session, clean)
    except BaseException:
        session.close()
        raise

    def generate() -> Iterator[str]:
        try:
            yield from csv_chunks(columns, export.iter_jobs_wide(session, clean, columns))
        finally:
            session.close()

    resp = Response(stream_with_context(generate()), mimetype="text/csv")
    resp.call_on_close(session.close)  # also when the body is never read
    resp.headers["Content-Disposition"] = 'attachment; filename="instaboost-jobs.csv"'
    return resp


@bp.get("/jobs.csv")
def jobs_csv():
    """The wide export (one row per job, as `instaboost run-tests` writes), for browsers without the API token."""
    return jobs_csv_response(request.args)


@bp.get("/runs.csv")
def runs_csv():
    """Export the runs the /runs page shows (same filters), for browsers without the API token."""
    return csv_response(request.args)


def sweep_csv_response(sweep_id):
    """Return a sweep's per-(setting, M, split) table as a CSV attachment."""
    from flask import Response

    from shared.calibration import table_csv
    from shared.store import sweep_views

    sweep = sweep_views.get_sweep(db(), sweep_id)
    resp = Response(table_csv(sweep.result or {"table": [], "best": None}), mimetype="text/csv")
    resp.headers["Content-Disposition"] = f'attachment; filename="instaboost-sweep-{sweep.id}.csv"'
    return resp
