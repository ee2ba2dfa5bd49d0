# syntax=docker/dockerfile:1
# wechat-token-proxy container image. Not built by CI (no container engine there).
#
#   docker build -t wechat-token-proxy:latest .
#   docker run --rm -e WECHAT_MP_SECRET=... wechat-token-proxy:latest
#
# The image carries the repository's config.toml, whose listeners are on 127.0.0.1: right for a
# sidecar (the application shares the pod's or container's network namespace), not for
# `docker run -p`. Mount your own config over /etc/wechat-token-proxy/config.toml (see
# deploy/kubernetes/configmap.yaml). Validate one with:
#   docker run --rm -v $PWD/config.toml:/etc/wechat-token-proxy/config.toml:ro \
#     -e WECHAT_MP_SECRET=... wechat-token-proxy:latest check --config /etc/wechat-token-proxy/config.toml

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and compiled dependencies between builds; the binary is
# copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && cp target/release/wechat-token-proxy /usr/local/bin/wechat-token-proxy

# glibc and libgcc from Debian 12, like the builder; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/wechat-token-proxy /usr/local/bin/wechat-token-proxy
COPY config.toml /etc/wechat-token-proxy/config.toml
# Numeric, so Kubernetes can verify runAsNonRoot.
USER 65532:65532
# 8080: the proxy; 9090: admin (/healthz, /readyz, /apps, /metrics).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/wechat-token-proxy"]
CMD ["--config", "/etc/wechat-token-proxy/config.toml"]
