#!/bin/sh
# As in the official image: a server started without a config file listens on every interface of the
# container (Redis' protected mode would refuse the other containers), the caller's options after that.
set -e
if [ "${1:-}" = redis-server ]; then
  shift
  set -- redis-server --protected-mode no "$@"
fi
exec "$@"
