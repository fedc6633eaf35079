# syntax=docker/dockerfile:1
# oidc-gateway: multi-stage build. The runtime image has no shell and no package
# manager; it runs as the distroless "nonroot" user (uid 65532). Base images are
# fully qualified, so Docker and Podman resolve them the same way. The README's
# "Docker" section has the `docker run` that goes with it; examples/rustdesk/ a compose file.
#
#   docker build -t oidc-gateway .        # ~10 min the first time on 2 cores
#
# scripts/container-smoke builds the same layout and runtime stages around a
# locally built binary: it passes BUILDER (an image with /src/target/release/
# oidc-gateway, /src/config.toml and a shell) and RUNTIME_BASE (a local stand-in
# for distroless when no registry is reachable).
ARG BUILDER=builder
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot

FROM docker.io/library/rust:1-bookworm AS builder
WORKDIR /src
# Dependencies first, so code changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
# The manifest names the bench targets: cargo wants their files present.
COPY benches ./benches
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
COPY config.toml ./
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && strip target/release/oidc-gateway

# The files of the runtime image, laid out under /out.
FROM ${BUILDER} AS layout
# /etc/oidc-gateway holds the config (mount yours over config.toml). Relative paths
# in the config follow the config file's directory, so the shipped
# tls.cert = "certs/gateway.crt" means /etc/oidc-gateway/certs/, a link into the
# state volume /var/lib/oidc-gateway (writable by uid 65532: the self-signed pair
# is written there when no certificate is provided).
RUN mkdir -p /out/usr/local/bin /out/etc/oidc-gateway /out/var/lib/oidc-gateway/certs \
    && cp /src/target/release/oidc-gateway /out/usr/local/bin/oidc-gateway \
    && cp /src/config.toml /out/etc/oidc-gateway/config.toml \
    && ln -s /var/lib/oidc-gateway/certs /out/etc/oidc-gateway/certs

FROM ${RUNTIME_BASE}
COPY --from=layout /out/usr/local/bin/oidc-gateway /usr/local/bin/oidc-gateway
COPY --from=layout /out/etc/oidc-gateway /etc/oidc-gateway
COPY --from=layout --chown=65532:65532 /out/var/lib/oidc-gateway /var/lib/oidc-gateway
WORKDIR /var/lib/oidc-gateway
ENV OIDC_GATEWAY_CONFIG=/etc/oidc-gateway/config.toml
USER 65532:65532
# A named volume here starts with the image's content and ownership (uid 65532).
VOLUME ["/var/lib/oidc-gateway"]
# HTTPS (server.listen); 8080 is the optional plain-HTTP redirect listener (server.redirect_http).
EXPOSE 8443 8080
# No curl in the image: the binary asks its own listener (pinned to its own certificate).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/oidc-gateway", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/oidc-gateway"]
CMD ["run"]
