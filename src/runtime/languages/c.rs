//! C: Debian's gcc.

use super::{Recipe, Spec};

pub const SPEC: Spec = Spec {
    name: "c",
    doc: "`gcc -std=c17 -O2 … -lm`, cached, then run",
    packages: &["gcc", "libc6-dev"],
    version: &["gcc", "-dumpfullversion"],
    file: "main.c",
    recipe: Recipe::Compile {
        build: &[
            "gcc",
            "-std=c17",
            "-O2",
            "-o",
            "{out}/main",
            "{file}",
            "-lm",
        ],
        run: &["{build}/main"],
        toolchain_cache: None,
    },
    ..Spec::DEFAULT
};
