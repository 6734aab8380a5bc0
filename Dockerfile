# syntax=docker/dockerfile:1.7
#
# One image with every binary of the workspace: saga-worker, saga-gateway, the example
# participants (inventory, payment, orders, flight, hotel) and sagactl. docker-compose.yml
# picks the binary per service with `command:`.
#
#   docker build -t saga-runtime:local .
#   docker run --rm saga-runtime:local sagactl def validate /etc/saga/sagas/order-checkout.yaml

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# --- build ----------------------------------------------------------------------------
# The full image (not -slim): `ring` needs a C compiler. The runtime stage uses the same
# Debian release, so the binaries find the glibc they were linked against.
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src

# Only what the build needs (no target/, .tools/ or local data in the context layers).
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY crates crates
COPY bin bin
COPY tests tests
COPY sagas sagas
COPY events events
COPY aggregates aggregates

# Cache mounts keep the registry and target dir across builds; the binaries are copied
# out of the cached target dir because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && for b in saga-worker saga-gateway inventory payment orders flight hotel \
                 notification rewards shipping bank sagactl; do \
        cp "target/release/$b" /out/; \
    done

# --- runtime --------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin saga \
 && mkdir -p /data \
 && chown saga:saga /data

COPY --from=build /out/ /usr/local/bin/
COPY sagas /etc/saga/sagas
COPY events /etc/saga/events
COPY aggregates /etc/saga/aggregates

# Every binary reads these (flags override them). PARTITIONS is the workers' and the
# gateway's name for the partition count, SAGA_PARTITIONS the participants'.
ENV SAGAS_DIR=/etc/saga/sagas \
    DATA_DIR=/data \
    NATS_URL=nats://nats:4222 \
    PARTITIONS=16 \
    SAGA_PARTITIONS=16 \
    NO_COLOR=1 \
    RUST_LOG=info

USER saga
WORKDIR /data
# Each service keeps its sled store here: give it a volume of its own.
VOLUME ["/data"]
EXPOSE 50051
CMD ["sagactl", "--help"]
