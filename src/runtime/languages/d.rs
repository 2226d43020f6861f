//! D: GCC's D compiler (gdc) and its Phobos standard library.

use super::{Recipe, Spec};

pub const SPEC: Spec = Spec {
    name: "d",
    aliases: &["dlang"],
    doc: "`gdc -O2` (GCC's D compiler, Phobos), cached, then run",
    packages: &["gdc"],
    version: &["gdc", "-dumpfullversion"],
    file: "main.d",
    recipe: Recipe::Compile {
        build: &["gdc", "-O2", "-o", "{out}/main", "{file}"],
        run: &["{build}/main"],
        toolchain_cache: None,
    },
    ..Spec::DEFAULT
};
