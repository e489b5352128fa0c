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
# table's rows that take minutes (faults_slow: Redis down 5 minutes, 500 jobs), which .ci/run runs after this. A Docker engine
# (and Compose v2) is started where one can be, so tests/system/test_docker.py runs the compose stack; where none
# can start, it says why here and pytest skips that module, naming the reason. `make test DOCKER=0` starts no
# engine and leaves the Docker tests out (-m "not docker"), saying so.
DOCKER ?= 1
PYTEST_MARKS = $(if $(filter 0,$(DOCKER)),not docker and not faults_slow,not faults_slow)
test: install
	bash scripts/services.sh
	@if [ "$(DOCKER)" = 0 ]; then echo "make test: DOCKER=0: no Docker engine started, the docker tests left out" >&2; \
	else bash scripts/docker-engine.sh || echo "make test: no Docker engine (the reason is above);" \
	  "tests/system/test_docker.py will be skipped" >&2; fi
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -m "$(PYTEST_MARKS)" --durations=30

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

# The compose stack end to end (tests/system/test_docker.py): images, `--profile cpu up` with two workers, a job and
# the openai SDK over HTTP, completions waiting past 30 s, kill -9 of a worker mid-burst.
docker-test: install
	bash scripts/docker-engine.sh
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -m docker tests/system/test_docker.py

bench: install
	HF_HUB_OFFLINE=1 $(PYTHON) bench/overhead.py

settings-docs:
	instaboost settings --yaml > config.yaml
	@echo "paste the output of 'instaboost settings --markdown' into README.md's Settings section"
