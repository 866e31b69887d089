# volsnap: one image, both binaries (`volsnap-api`, `volsnap-worker`).
#
# Base images are build arguments, so a site without a registry can use local ones
# (deploy/build-images.sh builds a Debian base with debootstrap):
#   BASE_IMAGE     the runtime base (Debian bookworm or compatible)
#   BUILDER_IMAGE  a Rust toolchain image (Debian's own rustc is too old for this
#                  workspace)
#
#   docker build -t volsnap .                                  # multi-stage build
#   docker build --target prebuilt -t volsnap CONTEXT           # CONTEXT/prebuilt/ holds
#                                                               # host-built binaries
# The stages before the one asked for are built by the classic builder too, so the
# `prebuilt` target comes before the compiling stages.
ARG BASE_IMAGE=debian:bookworm-slim
ARG BUILDER_IMAGE=rust:1-bookworm

FROM ${BASE_IMAGE} AS runtime-base
# The API runs as this user; the worker's service runs as root (compose sets it): it
# talks to the Docker socket and keeps file owners when restoring volumes.
RUN useradd --system --uid 10001 --home-dir /var/lib/volsnap --create-home volsnap
ENV VOLSNAP_LOG_FORMAT=json
EXPOSE 8080 9091
USER volsnap
CMD ["volsnap-api", "serve"]

FROM runtime-base AS prebuilt
COPY prebuilt/volsnap-api prebuilt/volsnap-worker /usr/local/bin/

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p volsnap-api -p volsnap-worker \
    && mkdir -p /out && cp target/release/volsnap-api target/release/volsnap-worker /out/

FROM runtime-base AS runtime
COPY --from=builder /out/volsnap-api /out/volsnap-worker /usr/local/bin/
