# syntax=docker/dockerfile:1.7
#
# Tessera: a multi-stage build. The builder is pinned to the toolchain this
# repository is tested with; the runtime is distroless (glibc, CA roots, no
# shell, no package manager) and runs as an unprivileged user. Nothing secret
# is baked in: the configuration and every key are mounted at run time (see
# "Deployment" in the README).
#
#   docker build -t tessera:dev .
#   docker run --rm -p 8443:8443 -p 9090:9090 \
#     -v "$PWD/deploy/tessera.toml:/etc/tessera/tessera.toml:ro" \
#     -v "$PWD/secrets/tls:/etc/tessera/tls:ro" \
#     -v "$PWD/secrets/signing:/etc/tessera/signing:ro" \
#     tessera:dev
#
# The mounted files must be readable by uid 65532 (keys written by `tessera
# keys generate` are 0600 for their owner), and deploy/tessera.toml also
# expects Kubernetes' service-account CA and a Redis Sentinel set: see
# "Deployment" in the README.
#
# For reproducible images, pin both base images by digest
# (FROM rust:1.95.0-slim-bookworm@sha256:…) in your own build pipeline.

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /build
# Only what the build needs (.dockerignore keeps out target/, keys, .git).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
COPY tests ./tests
COPY config ./config
# The release profile keeps line tables for profiling (`debug = 1`: a
# ~90 MB binary); the image ships it without debug info.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
# The registry and target directories are build caches, not image layers.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin tessera \
 && install -D -m 0755 target/release/tessera /out/tessera

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /out/tessera /usr/local/bin/tessera
# 65532: distroless's "nonroot". The broker needs no privilege: it listens
# on unprivileged ports and only reads its mounted files.
USER 65532:65532
# HTTPS API (mTLS) and the plain-HTTP ops listener (/healthz, /readyz,
# /metrics): keep the latter on a private network.
EXPOSE 8443 9090
ENV TESSERA_CONFIG=/etc/tessera/tessera.toml
ENTRYPOINT ["/usr/local/bin/tessera"]
CMD ["serve"]
