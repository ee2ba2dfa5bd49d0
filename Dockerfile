# syntax=docker/dockerfile:1
# wechat-token-proxy container image. Not built by CI (no container engine there).
#
#   docker build -t registry.example.com/wechat-token-proxy:0.1.0 .
#   docker push registry.example.com/wechat-token-proxy:0.1.0    # where your cluster pulls from
#
# The image carries the repository's config.toml, which reads the appid and the AppSecret from
# WECHAT_MP_APPID and WECHAT_MP_SECRET: without them the proxy refuses to start (exit code 2,
# naming apps.mp.appid_env). Mount your own config
# over /etc/wechat-token-proxy/config.toml (see deploy/kubernetes/configmap.yaml). The example's
# listeners are on 127.0.0.1: right for a sidecar (the application shares the pod's or container's
# network namespace), not for `docker run -p`. Validate a config (check also tries both ports):
#   docker run --rm -v $PWD/config.toml:/etc/wechat-token-proxy/config.toml:ro \
#     -e WECHAT_MP_APPID=wx... -e WECHAT_MP_SECRET=... registry.example.com/wechat-token-proxy:0.1.0 \
#     check --config /etc/wechat-token-proxy/config.toml
# Exit codes: 0 served and stopped cleanly, 1 a port cannot be bound, 2 the config is refused.

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
# 8080: the proxy; 8079: admin (/, /healthz, /servingz, /readyz, /apps, /metrics).
EXPOSE 8080 8079
ENTRYPOINT ["/usr/local/bin/wechat-token-proxy"]
CMD ["--config", "/etc/wechat-token-proxy/config.toml"]
