# tokenkeeper's container image. See docs/DEPLOY.md.
#
#   docker build -t tokenkeeper .                       # builds the binary in a Rust stage
#   docker build -t tokenkeeper --target prebuilt \
#       --build-arg BINARY=target/release/tokenkeeper .  # packs a binary built on the host
#
# Both need a base image: BASE_IMAGE (default debian:bookworm-slim) for the runtime and
# RUST_IMAGE (default rust:1.85-slim-bookworm) for the builder. Where no registry is
# reachable, build a base from Debian's packages (scripts/container-base) and pass it with
# --build-arg BASE_IMAGE=localhost/tokenkeeper-base:<key>. A host-built binary must be linked
# against a glibc no newer than the base's (Debian 12's is 2.36).

ARG BASE_IMAGE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1.85-slim-bookworm

# --- runtime: what every variant ships -------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime-base

# ca-certificates: the provider and the sinks speak HTTPS. curl: the health check. tini: PID 1,
# which reaps every orphan (see below). Installed only if the base lacks them, so a base
# built offline with them included needs no network here.
RUN set -eu; \
    need=""; \
    for p in ca-certificates curl tini; do \
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need="$need $p"; \
    done; \
    if [ -n "$need" ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need; \
        rm -rf /var/lib/apt/lists/*; \
    fi

# A fixed, unprivileged uid/gid (10001) so volume ownership and Kubernetes' runAsUser and
# fsGroup can name it. /data holds the store, its key (unless TOKENKEEPER_KEY is set), the
# locks and the admin token; /shared is where to mount volumes that other containers read
# (a bot's .env or Claude Code's credentials directory). Both are created here, owned by the
# user, because Docker and podman give a new named volume the ownership of its mount point.
RUN set -eu; \
    groupadd --gid 10001 tokenkeeper; \
    useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin tokenkeeper; \
    install -d -m 0700 -o 10001 -g 10001 /data; \
    install -d -m 0755 -o 10001 -g 10001 /shared

# Configuration by environment alone works (docs/CONFIG.md lists every TOKENKEEPER_*
# variable); mount a config file and set TOKENKEEPER_CONFIG for sinks and alerts.
ENV HOME=/data \
    TOKENKEEPER_DATA_DIR=/data \
    TOKENKEEPER_LISTEN=0.0.0.0:8377

VOLUME ["/data"]
EXPOSE 8377

# The port is taken from TOKENKEEPER_LISTEN so a changed listen address keeps the check true.
# (Docker keeps HEALTHCHECK; podman only with `podman build --format docker`.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD curl -fsS -o /dev/null "http://127.0.0.1:${TOKENKEEPER_LISTEN##*:}/health" || exit 1

USER 10001:10001
WORKDIR /data

# tini is PID 1: it forwards SIGTERM/SIGINT to tokenkeeper and exits with its status, and it
# reaps every process re-parented to PID 1. tokenkeeper waits for the commands it starts
# (on_change, command sinks, alert commands) itself, but a command that leaves a background
# process behind hands that orphan to PID 1, and only an init reaps it.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/tokenkeeper"]
CMD ["serve"]

# --- prebuilt: a binary built on the host (`--target prebuilt`) ------------------------------
FROM runtime-base AS prebuilt
ARG BINARY=target/release/tokenkeeper
COPY ${BINARY} /usr/local/bin/tokenkeeper

# --- builder: cargo build --release --locked --------------------------------------------------
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tokenkeeper \
    && install -m 0755 target/release/tokenkeeper /usr/local/bin/tokenkeeper

# --- default: the binary from the builder -----------------------------------------------------
FROM runtime-base AS runtime
COPY --from=builder /usr/local/bin/tokenkeeper /usr/local/bin/tokenkeeper
