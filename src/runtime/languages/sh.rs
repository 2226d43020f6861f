//! POSIX sh: Debian's dash.

use super::{Recipe, Spec};

pub const SPEC: Spec = Spec {
    name: "sh",
    doc: "POSIX sh (dash)",
    packages: &["dash"],
    version: &["/bin/sh", "-c", "echo posix"],
    file: "main.sh",
    recipe: Recipe::Interpret {
        run: &["/bin/sh", "{file}"],
    },
    ..Spec::DEFAULT
};
