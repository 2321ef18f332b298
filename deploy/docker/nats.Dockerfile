# NATS from Debian's nats-server package, on the local Debian base (deploy/local-images.sh);
# the official `nats` image runs the same configuration (BATON_NATS_IMAGE=nats:2.10).
ARG BASE
FROM ${BASE}
RUN apt-get update && apt-get install -y --no-install-recommends nats-server \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o nats -g nats /data
USER nats
EXPOSE 4222 6222 8222
ENTRYPOINT ["/usr/sbin/nats-server"]
