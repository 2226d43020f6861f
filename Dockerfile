# syntax=docker/dockerfile:1
# code-interpreter: the server binary plus every runtime it sandboxes user code with.
#   docker build -t code-interpreter .          (or: make image, which uses podman)
# Run it with the options in compose.yaml: bubblewrap needs seccomp and the masked /proc
# paths relaxed (README, "Container").
#
# Build arguments:
#   BASE_IMAGE   Debian 12 image both stages start from (default debian:12-slim)
#   SERVER_FROM  source: build the server here (default); prebuilt: take the binary from
#                target/prebuilt/code-interpreter in the build context (a host build).
#                podman/buildah 1.28 needs it given explicitly (--build-arg SERVER_FROM=source)
#   APP_UID, APP_GID  the unprivileged user the server runs as (match your volume owner)
ARG BASE_IMAGE=debian:12-slim
ARG SERVER_FROM=source

# --- source: the Rust binary, built with Debian's rustc-web/cargo-web (1.96) ----------
# Same Debian as the runtime stage, so the binary links against the same glibc.
FROM ${BASE_IMAGE} AS source
WORKDIR /src
COPY scripts/find-cargo scripts/install-build-tools scripts/
RUN scripts/install-build-tools && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src/ src/
# The playground, built (make web) and committed; the binary embeds it.
COPY web/dist/ web/dist/
# Cache mounts keep the crate registry and build artefacts between builds; the binary
# is copied out because the target/ mount is gone after this step.
RUN --mount=type=cache,target=/root/.cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/code-interpreter /out/code-interpreter

# --- prebuilt: a binary built on a Debian 12 host (CI builds it once) ---------------------
FROM ${BASE_IMAGE} AS prebuilt
COPY target/prebuilt/code-interpreter /out/code-interpreter

FROM ${SERVER_FROM} AS server

# --- runtime ----------------------------------------------------------------------------
FROM ${BASE_IMAGE}

ENV RUNTIME_DIR=/opt/code-interpreter \
    DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=8000 \
    NOTEBOOKS_DIR=/notebooks

# Documentation, man pages and translations are never read in a container (copyright
# files stay): about 150 MB less with the toolchains below.
RUN printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' \
        'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' \
        'path-exclude=/usr/share/locale/*' 'path-include=/usr/share/locale/locale.alias' \
        >/etc/dpkg/dpkg.cfg.d/01-container-slim

# scripts/bootstrap installs bubblewrap, the toolchains, the Python venv and esbuild
# exactly as on a bare machine, and tini, which runs as PID 1: it forwards signals to the
# server and reaps orphaned processes. Chromium (browser tests) and cargo (the server is
# built in its own stage) stay out, and so do the Python packages' own test suites (about
# 200 MB; nothing imports them). The scripts and locks stay in the image for inspection.
COPY scripts/bootstrap scripts/find-cargo scripts/install-build-tools /usr/local/share/code-interpreter/scripts/
COPY runtime/ /usr/local/share/code-interpreter/runtime/
# (The man1 directory is absent from slim images and some JDK postinst scripts need it.)
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=cache,target=/root/.npm \
    mkdir -p /usr/share/man/man1 \
    && BOOTSTRAP_FOR_IMAGE=1 /usr/local/share/code-interpreter/scripts/bootstrap \
    && find "$RUNTIME_DIR/python/lib" -path '*/site-packages/*' -type d -name tests -prune \
        -exec rm -rf {} + \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*

COPY --from=server /out/code-interpreter /usr/local/bin/code-interpreter

# The server runs unprivileged: bubblewrap then puts user code in a user namespace
# mapped to this uid, so it can never act as root on the host. (Declared this late so a
# different uid reuses the layers above.)
ARG APP_UID=10001
ARG APP_GID=10001
RUN groupadd --gid "${APP_GID}" app \
    && useradd --uid "${APP_UID}" --gid "${APP_GID}" --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app \
    && install -d -m 0750 -o "${APP_UID}" -g "${APP_GID}" /data /notebooks
USER ${APP_UID}:${APP_GID}
WORKDIR /home/app
VOLUME ["/data", "/notebooks"]

EXPOSE 8000
# Ready means a real sandbox has started (GET /health?ready=1); without the container
# options bubblewrap needs, the container reports unhealthy instead of failing every run.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["code-interpreter", "healthcheck"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["code-interpreter", "serve"]
