//! R: Debian's `r-base-core`, run with `Rscript`. R reads its configuration from `/etc/R`
//! (`R_HOME/etc` links there).

use super::{MountSpec, Recipe, Spec};

pub const SPEC: Spec = Spec {
    name: "r",
    doc: "`Rscript` (Debian's `r-base-core`: R and its base packages)",
    packages: &["r-base-core"],
    mounts: &[MountSpec::same("/etc/R")],
    version: &["Rscript", "-e", "cat(format(getRversion()), '\\n')"],
    libraries: Some(&[
        "Rscript",
        "-e",
        "p <- installed.packages()[, c('Package', 'Version')]; cat(paste(p[, 1], p[, 2]), sep = '\\n')",
    ]),
    file: "main.R",
    recipe: Recipe::Interpret {
        run: &["Rscript", "{file}"],
    },
    ..Spec::DEFAULT
};
