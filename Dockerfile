# syntax=docker/dockerfile:1
# One image with every quickP2P role binary; each Kubernetes Deployment picks its own as the
# command (/usr/local/bin/quickp2p-<role>). Build from the repository root:
#
#   docker build -t quickp2p/quickp2p:0.1.0 .
#   docker build --build-arg ROLES="stun gateway checkpoint relay supernode handshake index admin" …
#
# ROLES lists the service binaries to build (quickp2p-<role>, each from services/<role>); add
# handshake, index and admin as their crates land.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
ARG ROLES="stun gateway checkpoint relay supernode admin index handshake"
WORKDIR /src
COPY . .
# The caches keep crates and build output between builds; the binaries are copied out of the
# cached target folder in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    set -eux; \
    packages=""; for role in $ROLES; do packages="$packages -p quickp2p-$role"; done; \
    cargo build --release --locked $packages; \
    mkdir -p /out; \
    for role in $ROLES; do install -m 0755 "target/release/quickp2p-$role" /out/; done

# distroless/cc: glibc and libgcc only, no shell, user 65532 (nonroot) — the chart's runAsUser.
FROM ${RUNTIME_IMAGE}
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# STUN 3478-3480, relay 3482-3483, gateway 4433-4434, gRPC 50051-50055, ops 9433-9482
EXPOSE 3478/udp 3479/udp 3480/tcp 3482/udp 3483/tcp 4433/udp 4434/tcp 50051-50055/tcp
# The all-in-one supernode by default; the chart sets the command per role.
ENTRYPOINT ["/usr/local/bin/quickp2p-supernode"]
