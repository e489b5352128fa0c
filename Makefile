# The two commands of the README's quick start: `make run` and `make test`.
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install services run test test-fast demo bench settings-docs docker-base docker-test

install:
	bash scripts/install.sh

services:
	bash scripts/services.sh

# The whole service on this machine: web app + one worker, SQLite store, local Redis.
run: install
	bash scripts/services.sh
	instaboost serve --host $(HOST) --port $(PORT)

# One boosted generation from the command line, no services.
demo: install
	HF_HUB_OFFLINE=1 instaboost generate --instruction "Answer only in French." \
	  --query "What is the capital of Germany?" --multiplier 5

# Everything: tests/<layer>/ for unit, cli, engine, store, web, jobs, system (see README, Tests), except the fault
# table's rows that take minutes (faults_slow: Redis down 5 minutes, 500 jobs), which .ci/run runs after this.
test: install
	bash scripts/services.sh
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -m "not faults_slow"

# What needs no model, no services and no browser or Docker: the tests no marker excludes (tests/unit,
# tests/cli and the unmarked tests of the other folders). No install step, no services started.
FAST = not slow and not services and not browser and not docker
test-fast:
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -m "$(FAST)"

# Docker without a registry: start an engine (and Compose v2) if none answers, build the local base images
# (instaboost-base, -redis, -postgres) and print the .env lines that select them.
docker-base:
	bash scripts/docker-engine.sh
	bash scripts/docker-base.sh

# The compose stack end to end: images, `--profile cpu up`, a job over HTTP, a worker restart (tests/system/test_docker.py).
docker-test: install
	bash scripts/docker-engine.sh
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -m docker tests/system/test_docker.py

bench: install
	HF_HUB_OFFLINE=1 $(PYTHON) bench/overhead.py

settings-docs:
	instaboost settings --yaml > config.yaml
	@echo "paste the output of 'instaboost settings --markdown' into README.md's Settings section"
