# One recipe for every service image: `docker build --build-arg SERVICE=<name> .`
# (docker-compose.yml builds all six). Multi-stage: a Rust build stage, then a small Debian
# runtime running as an unprivileged user.
# Both stages' images are overrides (where no registry is reachable, `docker compose` is given
# locally built equivalents): a Rust toolchain on Debian bookworm, and a bookworm runtime.
ARG BUILDER_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
FROM ${BUILDER_IMAGE} AS build
ARG SERVICE
WORKDIR /src
COPY . .
# The caches are shared by the six builds compose runs at once: one at a time (cargo's own
# lock lives outside them), each reusing what the others compiled.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p "${SERVICE}" --bin "${SERVICE}" \
    && cp "target/release/${SERVICE}" /service

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home app
COPY --from=build /service /usr/local/bin/service
USER 10001
ENV LOG_JSON=true
ENTRYPOINT ["/usr/local/bin/service"]
