//! Rust: Debian's `rustc-web` (a current release; Debian 12's plain `rustc` is 1.63).
//! Sandboxed code cannot reach a rustup toolchain under `/root`, so it must be in `/usr`.

use super::{Recipe, Spec};

pub const SPEC: Spec = Spec {
    name: "rust",
    aliases: &["rs"],
    doc: "`rustc --edition 2021 -O` (Debian's `rustc-web`), cached, then run; `cargo` is there for offline projects",
    packages: &["rustc-web", "cargo-web"],
    version: &["rustc", "--version"],
    file: "main.rs",
    recipe: Recipe::Compile {
        build: &[
            "rustc",
            "--edition",
            "2021",
            "-O",
            "-o",
            "{out}/main",
            "{file}",
        ],
        run: &["{build}/main"],
        toolchain_cache: None,
    },
    ..Spec::DEFAULT
};
