//! Go: the toolchain `scripts/bootstrap` unpacks into `RUNTIME_DIR/go` (a pinned release
//! from the Go module proxy: Debian 12's own Go is 1.19). `go build` fills a `GOCACHE` per
//! tenant, seeded with the standard library built at bootstrap.

use super::{Recipe, Spec, ToolchainCache};

pub const SPEC: Spec = Spec {
    name: "go",
    compat_aliases: &["golang"],
    doc: "`go build -trimpath` (the pinned toolchain in `RUNTIME_DIR/go`, `CGO_ENABLED=0`), cached, then run",
    packages: &[],
    path: &["{runtime}/go/bin"],
    env: &[
        ("GOCACHE", GOCACHE),
        ("GOPATH", "/tmp/go"),
        ("GOTOOLCHAIN", "local"),
        ("CGO_ENABLED", "0"),
        ("GOFLAGS", "-buildvcs=false"),
        ("GOTELEMETRY", "off"),
    ],
    version: &["go", "env", "GOVERSION"],
    libraries: Some(&[
        "/bin/sh",
        "-c",
        "go list std | grep -v -e internal -e ^vendor/",
    ]),
    file: "main.go",
    recipe: Recipe::Compile {
        build: &["go", "build", "-trimpath", "-o", "{out}/main", "{file}"],
        run: &["{build}/main"],
        toolchain_cache: Some(ToolchainCache {
            inside: GOCACHE,
            seed: Some("{runtime}/go-cache"),
        }),
    },
    ..Spec::DEFAULT
};

const GOCACHE: &str = "/tmp/go-build-cache";
