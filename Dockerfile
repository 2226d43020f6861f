# syntax=docker/dockerfile:1
# code-interpreter: the server binary plus every runtime it sandboxes user code with.
#   docker build -t code-interpreter .
# Run it through compose.yaml: bubblewrap needs seccomp/apparmor relaxed (see there).

# --- build: the Rust binary ---------------------------------------------------
# The official Rust image is Debian 12 too, so the binary links against the same glibc
# as the runtime stage. Edition 2024 needs Rust >= 1.85.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and build artefacts between builds;
# the binary is copied out because the target/ mount is gone after this step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/code-interpreter /out/code-interpreter

# --- runtime ------------------------------------------------------------------
FROM debian:12-slim

ENV RUNTIME_DIR=/opt/code-interpreter \
    DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=8000

# scripts/bootstrap installs bubblewrap, the toolchains, the Python venv and esbuild
# exactly as on a bare machine; kept in the image so the locks can be inspected.
# Chromium is only for browser tests, so it stays out of the image.
# tini (installed while bootstrap's apt lists are still there) runs as PID 1:
# it forwards signals to the server and reaps orphaned processes.
COPY scripts/bootstrap /usr/local/share/code-interpreter/scripts/bootstrap
COPY runtime/ /usr/local/share/code-interpreter/runtime/
# (The man1 directory is absent from slim images and some JDK postinst scripts need it.)
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=cache,target=/root/.npm \
    mkdir -p /usr/share/man/man1 \
    && BOOTSTRAP_SKIP_CHROMIUM=1 /usr/local/share/code-interpreter/scripts/bootstrap \
    && apt-get install -y -qq --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /out/code-interpreter /usr/local/bin/code-interpreter

# The server runs unprivileged: bubblewrap then puts user code in a user namespace
# mapped to this uid, so it can never act as root on the host.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/ci \
        --shell /usr/sbin/nologin ci \
    && install -d -m 0750 -o ci -g ci /data
USER ci
WORKDIR /home/ci
VOLUME ["/data"]

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/health >/dev/null || exit 1

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["code-interpreter", "serve"]
