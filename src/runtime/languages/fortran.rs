//! Fortran: Debian's gfortran, free-form source (`.f90`).

use super::{Recipe, Spec};

pub const SPEC: Spec = Spec {
    name: "fortran",
    aliases: &["f90"],
    doc: "`gfortran -O2` (free form, `.f90`), cached, then run",
    packages: &["gfortran"],
    version: &["gfortran", "-dumpfullversion"],
    file: "main.f90",
    recipe: Recipe::Compile {
        build: &["gfortran", "-O2", "-o", "{out}/main", "{file}"],
        run: &["{build}/main"],
        toolchain_cache: None,
    },
    ..Spec::DEFAULT
};
