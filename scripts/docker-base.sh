#!/usr/bin/env bash
# Local base images for hosts that reach no image registry (only Debian's mirror and PyPI):
#   instaboost-base:bookworm  Debian 12 from debootstrap (this machine's apt mirror and apt settings) with Python
#                             3.11 and its venv module (the Dockerfile makes the venv), and this machine's CA
#                             certificates (/usr/local/share/ca-certificates) trusted by apt, pip and Python
#   instaboost-redis:7        Debian's redis-server 7.0 on that base (stands in for redis:7-alpine)
#   instaboost-postgres:15    Debian's PostgreSQL 15 on that base, initialised from POSTGRES_USER/_PASSWORD/_DB
#                             like the official image (stands in for postgres:16-alpine)
# It also copies pip's local CPU build of torch (the find-links folder of `pip config list`), when there is one,
# into docker/wheels/, where the worker image's build installs it from.
#
# Idempotent: an image that exists with this script's version label is kept; FORCE=1 rebuilds all three.
# Prints the .env lines that point docker-compose.yml at these images on stdout (progress goes to stderr).
# Needs root (debootstrap) and a running Docker engine (scripts/docker-engine.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${INSTABOOST_BASE_IMAGE:-instaboost-base:bookworm}
REDIS_LOCAL_IMAGE=${INSTABOOST_REDIS_LOCAL_IMAGE:-instaboost-redis:7}
POSTGRES_LOCAL_IMAGE=${INSTABOOST_POSTGRES_LOCAL_IMAGE:-instaboost-postgres:15}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
VERSION=2  # bump when what goes into the images changes: existing ones are then rebuilt
say() { echo "docker-base: $*" >&2; }

docker info >/dev/null 2>&1 || { say "no Docker engine answers (bash scripts/docker-engine.sh)"; exit 1; }

current() {  # is image $1 there, built by this version of the script?
  [ "${FORCE:-0}" != 1 ] && [ "$(docker image inspect -f '{{index .Config.Labels "instaboost.base.version"}}' "$1" 2>/dev/null)" = "$VERSION" ]
}

proxy_args=()
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  if [ -n "${!v:-}" ]; then proxy_args+=(--build-arg "$v"); fi
done

# ---- instaboost-base: debootstrap + docker import -------------------------------------------------------------
if current "$BASE_IMAGE"; then
  say "$BASE_IMAGE is there"
else
  command -v debootstrap >/dev/null || {
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap; } >/dev/null
  }
  # This machine's Debian mirror (deb822 or one-line sources), unless DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR say.
  uris=$({ sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources;
           awk '$1 == "deb" {print $2}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list; } 2>/dev/null || true)
  mirror=${DEBIAN_MIRROR:-$(echo "$uris" | grep -v -- '-security' | grep -m1 '/debian/\?$' || true)}
  mirror=${mirror:-http://deb.debian.org/debian}
  security=${DEBIAN_SECURITY_MIRROR:-$(echo "$uris" | grep -m1 -- '/debian-security/\?$' || true)}
  security=${security:-http://deb.debian.org/debian-security}
  root=$(mktemp -d /var/tmp/instaboost-rootfs.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  say "debootstrap bookworm from $mirror into $root"
  debootstrap --variant=minbase --include=ca-certificates,python3,python3-venv bookworm "$root" "$mirror" \
    >"$root.log" 2>&1 || { tail -n 30 "$root.log" >&2; exit 1; }
  rm -f "$root.log"
  printf 'deb %s bookworm bookworm-updates main\ndeb %s bookworm-security main\n' "$mirror" "$security" \
    > "$root/etc/apt/sources.list"
  # apt settings the mirror needs here (a proxy, a snapshot's expired Release files), as this machine has them.
  apt-config dump | grep -iE '^Acquire::(https?::Proxy|Check-Valid-Until|Check-Date) ' \
    > "$root/etc/apt/apt.conf.d/90instaboost-host" || true
  # Trust what this machine trusts (an intercepting proxy's CA, say).
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$root" update-ca-certificates >/dev/null 2>&1
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
         "$root"/usr/share/man/* "$root"/usr/share/locale/*
  say "docker import $BASE_IMAGE"
  tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change "LABEL instaboost.base.version=$VERSION" \
    --change 'CMD ["bash"]' \
    - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"; trap - EXIT
  FORCE_DEPENDENTS=1
fi

# ---- redis and postgres on that base ---------------------------------------------------------------------------
for pair in "redis:$REDIS_LOCAL_IMAGE" "postgres:$POSTGRES_LOCAL_IMAGE"; do
  name=${pair%%:*} image=${pair#*:}
  if [ "${FORCE_DEPENDENTS:-0}" != 1 ] && current "$image"; then
    say "$image is there"
    continue
  fi
  say "docker build $image"
  docker build -q -t "$image" -f "scripts/docker/$name.Dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --label "instaboost.base.version=$VERSION" "${proxy_args[@]}" scripts/docker >/dev/null
done

# ---- the CPU torch wheel pip uses on this machine -------------------------------------------------------------
mkdir -p docker/wheels
if ls docker/wheels/torch-"$TORCH_VERSION"+cpu-cp311-*.whl >/dev/null 2>&1; then
  say "docker/wheels has torch $TORCH_VERSION (CPU)"
else
  links=$(python3 -m pip config list 2>/dev/null | sed -n "s/^[a-z:.]*find-links='\(.*\)'$/\1/p" | tr ' ' '\n' | sort -u)
  wheel=$(for d in $links; do ls "${d#file://}"/torch-"$TORCH_VERSION"+cpu-cp311-*.whl 2>/dev/null; done | head -1)
  if [ -n "$wheel" ]; then
    cp -l "$wheel" docker/wheels/ 2>/dev/null || cp "$wheel" docker/wheels/
    say "copied $(basename "$wheel") into docker/wheels"
  else
    say "no local CPU wheel of torch $TORCH_VERSION for Python 3.11: the CPU image takes torch from TORCH_CPU_INDEX_URL"
  fi
fi

cat <<EOF
PYTHON_IMAGE=$BASE_IMAGE
REDIS_IMAGE=$REDIS_LOCAL_IMAGE
POSTGRES_IMAGE=$POSTGRES_LOCAL_IMAGE
EOF
if ls docker/wheels/torch-"$TORCH_VERSION"+cpu-cp311-*.whl >/dev/null 2>&1; then echo "TORCH_CPU_INDEX_URL="; fi
