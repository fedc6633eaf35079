# syntax=docker/dockerfile:1
# oidc-gateway: multi-stage build. The runtime image has no shell and no package
# manager; it runs as the distroless "nonroot" user (uid 65532).
#
#   docker build -t oidc-gateway .
#   docker run -p 8443:8443 -v $PWD/config.toml:/etc/oidc-gateway/config.toml:ro \
#              -v $PWD/certs:/var/lib/oidc-gateway/certs oidc-gateway

FROM rust:1-bookworm AS builder
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
    && strip target/release/oidc-gateway \
    # The working directory of the runtime image, writable by the nonroot user
    # (a self-signed certificate is written to certs/ when none is mounted).
    && mkdir -p /out/var/lib/oidc-gateway/certs /out/etc/oidc-gateway \
    && cp config.toml /out/etc/oidc-gateway/config.toml

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/release/oidc-gateway /usr/local/bin/oidc-gateway
COPY --from=builder --chown=65532:65532 /out/var/lib/oidc-gateway /var/lib/oidc-gateway
COPY --from=builder /out/etc/oidc-gateway /etc/oidc-gateway
WORKDIR /var/lib/oidc-gateway
ENV OIDC_GATEWAY_CONFIG=/etc/oidc-gateway/config.toml
USER 65532:65532
# HTTPS (server.listen); 8080 is the optional plain-HTTP redirect listener (server.redirect_http).
EXPOSE 8443 8080
# No curl in the image: the binary asks its own listener (pinned to its own certificate).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/oidc-gateway", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/oidc-gateway"]
CMD ["run"]
