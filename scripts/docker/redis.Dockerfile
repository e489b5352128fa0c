# Redis 7 from Debian's package, on the local base (scripts/docker-base.sh): a stand-in for redis:7-alpine
# where no registry is reachable. Same contract as that image: data in /data, `redis-server ARGS...` as command.
ARG BASE_IMAGE=instaboost-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
COPY redis-entrypoint.sh /usr/local/bin/
WORKDIR /data
VOLUME /data
USER redis
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint.sh"]
CMD ["redis-server"]
