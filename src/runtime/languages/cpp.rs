//! C++: Debian's g++.

use super::{Recipe, Spec};

pub const SPEC: Spec = Spec {
    name: "cpp",
    aliases: &["c++"],
    doc: "`g++ -std=c++17 -O2`, cached, then run",
    packages: &["g++"],
    version: &["g++", "-dumpfullversion"],
    file: "main.cpp",
    recipe: Recipe::Compile {
        build: &["g++", "-std=c++17", "-O2", "-o", "{out}/main", "{file}"],
        run: &["{build}/main"],
        toolchain_cache: None,
    },
    ..Spec::DEFAULT
};
