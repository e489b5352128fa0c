"""The job store (PostgreSQL or SQLite), one module per concern.

- ``tables``: the SQLAlchemy tables (jobs, runs) and the status lifecycle (``JobStatus``).
- ``lifecycle``: every status change (``transition``), worker claims, progress and stored runs.
- ``submission``: store a queued job and enqueue it (the only part that talks to the broker).
- ``queries``: one job, pages of jobs and runs (filters, keyset cursors).
- ``export``: CSV columns and rows.
- ``serialize``: jobs and runs as JSON-able data.
- ``files``: OpenAI files (uploads checked as they stream, bounds, expiry; content loaded only when read).
- ``batch_input``: an OpenAI batch's create request and input lines, validated.
- ``batches``: OpenAI batches (atomic, idempotent creation; progress and finalization).
"""
