//! The sandbox every run goes through. For now: what this machine can offer it (bubblewrap,
//! namespaces, cgroups), as `doctor` and `/health` report it. Knows nothing about languages.

pub mod probe;
