# One recipe for every service image: `docker build --build-arg SERVICE=<name> .`
# (docker-compose.yml builds all six). Multi-stage: a Rust build stage, then a small Debian
# runtime running as an unprivileged user.
# Both stages' images are overrides (where no registry is reachable, `docker compose` is given
# locally built equivalents): a Rust toolchain on Debian bookworm, and a bookworm runtime.
ARG BUILDER_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY . .
# All six services in one build, whichever one this image is for: the stage is the same for the
# six, so `docker compose build` compiles the workspace once and each image takes its binary
# from it (no per-service build re-resolving features and re-linking the shared crates).
# The caches are shared with any other build of this recipe: one at a time (cargo's own lock
# lives outside them), each reusing what the others compiled.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bins \
        -p billing-service -p patient-service -p analytics-service \
        -p appointment-service -p notification-service -p gateway \
    && mkdir /services \
    && for service in billing-service patient-service analytics-service \
        appointment-service notification-service gateway; do \
        cp "target/release/${service}" /services/; \
    done

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home app
ARG SERVICE
RUN test -n "${SERVICE}" || { echo "--build-arg SERVICE=<one of the six services> is required" >&2; exit 1; }
COPY --from=build /services/${SERVICE} /usr/local/bin/service
USER 10001
ENV LOG_JSON=true
ENTRYPOINT ["/usr/local/bin/service"]
