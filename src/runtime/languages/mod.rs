//! The language registry: every language the server runs is one file here declaring its
//! names, toolchain, version probe, build and run recipe, the mounts and environment it
//! needs, the Debian packages `scripts/bootstrap` installs for it, and its one-line doc.
//!
//! Everything else that names languages is derived from [`LANGUAGES`]: `lang` parsing and
//! the supported list in errors, the OpenAPI and MCP schemas, `/health`, `/libraries`,
//! `doctor`, the README's table, and the table-driven test in `tests/languages.rs`. To add
//! a language, add a file and one line to [`LANGUAGES`] (see `docs/adding-a-language.md`).

mod bash;
mod c;
mod cpp;
mod d;
mod fortran;
mod go;
mod java;
mod javascript;
mod php;
mod python;
mod r;
mod rust;
mod sh;
mod typescript;

use std::fmt;
use std::sync::LazyLock;

/// Every language, in the order lists show them.
pub static LANGUAGES: &[&Spec] = &[
    &python::SPEC,
    &bash::SPEC,
    &sh::SPEC,
    &javascript::SPEC,
    &typescript::SPEC,
    &go::SPEC,
    &c::SPEC,
    &cpp::SPEC,
    &rust::SPEC,
    &java::SPEC,
    &r::SPEC,
    &php::SPEC,
    &fortran::SPEC,
    &d::SPEC,
];

/// A command line. Arguments may name placeholders, filled in when the command runs:
/// `{runtime}` (`RUNTIME_DIR`), `{file}` (the source file, under `/code`), `{stem}` (its
/// name without the extension), `{out}` (where a build writes), `{build}` (where the built
/// program is, read-only, when it runs), and whatever [`Source::vars`] names.
pub type Argv = &'static [&'static str];

/// One language.
pub struct Spec {
    /// What responses, `/health` and `/libraries` call it; `lang` accepts it.
    pub name: &'static str,
    /// Other names `lang` accepts, shown in lists and errors.
    pub aliases: &'static [&'static str],
    /// Names accepted for LibreChat's official Code API, not advertised.
    pub compat_aliases: &'static [&'static str],
    /// How it runs, in one line of Markdown: the README, OpenAPI and `languages` show it.
    pub doc: &'static str,
    /// The Debian packages `scripts/bootstrap` installs for it (a test keeps both in step).
    pub packages: &'static [&'static str],
    /// `doctor` fails when it is missing.
    pub required: bool,
    /// Directories its tools are in, added to every sandbox's `PATH`.
    pub path: &'static [&'static str],
    /// Environment it needs. Every run sees every language's variables: a shell script
    /// may call any toolchain.
    pub env: &'static [(&'static str, &'static str)],
    /// Host paths it needs read-only beyond `/usr` (every run gets them, for the same reason).
    pub mounts: &'static [MountSpec],
    /// Prints the toolchain's version; the first line is kept (`rustc 1.96.0` → `1.96.0`).
    pub version: Argv,
    /// Prints its installed packages, one per line: `name version`, or `name` alone for
    /// one that has the language's version. `None`: nothing to list.
    pub libraries: Option<Argv>,
    /// The source file's name, unless [`Spec::source`] chooses one.
    pub file: &'static str,
    /// Turns the code into the source file when the name or text depends on the code.
    pub source: Option<fn(&str, &SourceOptions) -> Source>,
    pub recipe: Recipe,
}

/// How code of a language becomes a running program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipe {
    /// A Jupyter kernel per session, which keeps its state (`runtime::python`).
    Kernel,
    /// A fresh interpreter per run.
    Interpret { run: Argv },
    /// Built in a sandbox of its own into the content-addressed build cache (a program
    /// built once is not built again), then run from `{build}`.
    Compile {
        build: Argv,
        run: Argv,
        /// A cache the toolchain keeps between builds (never user code's output).
        toolchain_cache: Option<ToolchainCache>,
    },
}

/// A toolchain's own cache (Go's `GOCACHE`): `DATA_DIR/cache/<language>`, writable at
/// `inside` while building.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolchainCache {
    pub inside: &'static str,
    /// A cache prepared by `scripts/bootstrap`, copied in while the cache is empty, so a
    /// fresh `DATA_DIR`'s first build does not compile the standard library.
    pub seed: Option<&'static str>,
}

/// A host path bound read-only. The last component of `host` may hold one `*`
/// (`/etc/java-*`); every match is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    pub host: &'static str,
    /// Where it appears (`{name}`: the matched file's name); `None`: at the same path.
    pub inside: Option<&'static str>,
}

impl MountSpec {
    pub const fn same(host: &'static str) -> Self {
        MountSpec { host, inside: None }
    }
}

/// Settings a language's [`Spec::source`] may depend on.
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceOptions {
    /// `BASH_STRICT_MODE`.
    pub bash_strict: bool,
}

/// The source file a run gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file: String,
    pub text: String,
    /// Extra placeholders for the recipe's argv.
    pub vars: Vec<(&'static str, &'static str)>,
}

impl Spec {
    /// The base every entry starts from (`..Spec::DEFAULT`).
    pub const DEFAULT: Spec = Spec {
        name: "",
        aliases: &[],
        compat_aliases: &[],
        doc: "",
        packages: &[],
        required: false,
        path: &[],
        env: &[],
        mounts: &[],
        version: &[],
        libraries: None,
        file: "",
        source: None,
        recipe: Recipe::Interpret { run: &[] },
    };

    pub fn source(&self, code: &str, options: &SourceOptions) -> Source {
        match self.source {
            Some(make) => make(code, options),
            None => Source {
                file: self.file.to_owned(),
                text: code.to_owned(),
                vars: Vec::new(),
            },
        }
    }

    pub fn compiled(&self) -> bool {
        matches!(self.recipe, Recipe::Compile { .. })
    }

    /// The programs its probes and recipe start (`rustc`, `gfortran`, …), by file name:
    /// what code outside the registry must not name (tests/architecture.rs).
    pub fn programs(&self) -> Vec<&'static str> {
        let mut argvs = vec![self.version];
        argvs.extend(self.libraries);
        match self.recipe {
            Recipe::Kernel => {}
            Recipe::Interpret { run } => argvs.push(run),
            Recipe::Compile { build, run, .. } => argvs.extend([build, run]),
        }
        let mut programs: Vec<&'static str> = argvs
            .iter()
            .filter_map(|argv| argv.first())
            // (The program a build made is the user's, not a toolchain.)
            .filter(|program| !program.starts_with("{build}"))
            .map(|program| program.rsplit('/').next().unwrap_or(program))
            .collect();
        programs.sort_unstable();
        programs.dedup();
        programs
    }

    /// The names a user may type, canonical first (the compat aliases excluded).
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        std::iter::once(self.name).chain(self.aliases.iter().copied())
    }
}

/// A language of the registry. Only [`LANGUAGES`] makes them, so every one has a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Language(&'static str);

impl Language {
    /// The one language with a stateful kernel.
    pub const PYTHON: Language = Language(python::SPEC.name);

    /// Every language, in registry order.
    pub fn all() -> impl Iterator<Item = Language> {
        LANGUAGES.iter().map(|s| Language(s.name))
    }

    /// A name or alias, case-insensitive.
    pub fn parse(name: &str) -> Option<Self> {
        let wanted = name.trim().to_ascii_lowercase();
        LANGUAGES
            .iter()
            .find(|s| {
                s.names()
                    .chain(s.compat_aliases.iter().copied())
                    .any(|n| n == wanted)
            })
            .map(|s| Language(s.name))
    }

    pub fn name(self) -> &'static str {
        self.0
    }

    pub fn spec(self) -> &'static Spec {
        LANGUAGES
            .iter()
            .find(|s| s.name == self.0)
            .expect("a Language is only made from a registry entry")
    }

    /// Whether its state lives on between runs (a kernel).
    pub fn stateful(self) -> bool {
        self.spec().recipe == Recipe::Kernel
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The names `lang` accepts, for error messages: `python (py), bash, …`.
pub fn supported() -> &'static str {
    static LIST: LazyLock<String> = LazyLock::new(|| {
        LANGUAGES
            .iter()
            .map(|s| match s.aliases {
                [] => s.name.to_owned(),
                aliases => format!("{} ({})", s.name, aliases.join(", ")),
            })
            .collect::<Vec<_>>()
            .join(", ")
    });
    &LIST
}

/// Every advertised name and alias, for schema enums.
pub fn all_names() -> Vec<&'static str> {
    LANGUAGES.iter().flat_map(|s| s.names()).collect()
}

/// The README's language table (Markdown), kept current by a test.
#[cfg(test)]
fn markdown_table() -> String {
    let mut out = String::from("| `lang` | how it runs | Debian packages |\n|---|---|---|\n");
    for s in LANGUAGES {
        let names: Vec<String> = s.names().map(|n| format!("`{n}`")).collect();
        let packages = match s.packages {
            [] => "—".to_owned(),
            p => p
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        out.push_str(&format!(
            "| {} | {} | {packages} |\n",
            names.join(", "),
            s.doc
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_and_aliases_map() {
        assert_eq!(Language::parse("PY"), Some(Language::PYTHON));
        assert_eq!(
            Language::parse("Node").map(Language::name),
            Some("javascript")
        );
        assert_eq!(Language::parse("c++").map(Language::name), Some("cpp"));
        assert_eq!(
            Language::parse("bun-ts").map(Language::name),
            Some("typescript")
        );
        assert_eq!(
            Language::parse(" F90 ").map(Language::name),
            Some("fortran")
        );
        assert_eq!(Language::parse("cobol"), None);
        for lang in Language::all() {
            assert_eq!(Language::parse(lang.name()), Some(lang));
        }
    }

    #[test]
    fn every_entry_is_complete_and_every_name_is_unique() {
        let mut seen = std::collections::HashSet::new();
        for s in LANGUAGES {
            assert!(
                !s.doc.is_empty() && !s.doc.contains('\n'),
                "{}: doc",
                s.name
            );
            assert!(!s.version.is_empty(), "{}: version probe", s.name);
            for name in s.names().chain(s.compat_aliases.iter().copied()) {
                assert_eq!(name, name.to_ascii_lowercase(), "{name}: lower case");
                assert!(seen.insert(name), "{name} names two languages");
            }
            let file = s.source("", &SourceOptions::default()).file;
            assert!(!file.is_empty() && !file.contains('/'), "{}: file", s.name);
            match s.recipe {
                Recipe::Kernel => {}
                Recipe::Interpret { run } => assert!(!run.is_empty(), "{}", s.name),
                Recipe::Compile { build, run, .. } => {
                    assert!(build.iter().any(|a| a.contains("{out}")), "{}", s.name);
                    assert!(run.iter().any(|a| a.contains("{build}")), "{}", s.name);
                }
            }
        }
        assert_eq!(Language::PYTHON.spec().recipe, Recipe::Kernel);
    }

    #[test]
    fn the_supported_list_names_every_language() {
        for s in LANGUAGES {
            assert!(supported().contains(s.name), "{}", s.name);
        }
        assert!(supported().starts_with("python (py), bash, sh, javascript (js, node)"));
    }

    /// Where the text between the `start` and `end` markers of a project file is.
    fn between(text: &str, start: &str, end: &str) -> std::ops::Range<usize> {
        let from = text.find(start).map(|i| i + start.len());
        let to = text.find(end);
        match (from, to) {
            (Some(a), Some(b)) if a <= b => a..b,
            _ => panic!("markers {start} … {end} not found"),
        }
    }

    #[test]
    fn the_readme_language_tables_are_generated_from_the_registry() {
        const START: &str = "<!-- languages:start (generated from src/runtime/languages; UPDATE_DOCS=1 cargo test readme rewrites it) -->\n";
        const END: &str = "<!-- languages:end -->";
        let table = markdown_table();
        let mut stale = Vec::new();
        for file in ["README.md", "docs/languages.md"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let mut text = std::fs::read_to_string(&path).unwrap();
            let range = between(&text, START, END);
            if text[range.clone()] == table {
                continue;
            }
            if std::env::var_os("UPDATE_DOCS").is_some() {
                text.replace_range(range, &table);
                std::fs::write(&path, text).unwrap();
            } else {
                stale.push(file);
            }
        }
        assert!(
            stale.is_empty(),
            "the language table of {stale:?} is stale; run `UPDATE_DOCS=1 cargo test readme` or paste:\n{table}"
        );
    }

    #[test]
    fn the_bootstrap_installs_every_languages_packages() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bootstrap");
        let script = std::fs::read_to_string(path).unwrap();
        let block = &script[between(&script, "# languages:start\n", "# languages:end")];
        let lines: Vec<(String, Vec<String>)> = block
            .lines()
            .filter_map(|l| {
                let l = l.trim().trim_matches('"');
                let (name, packages) = l.split_once(':')?;
                Some((
                    name.trim().to_owned(),
                    packages.split_whitespace().map(str::to_owned).collect(),
                ))
            })
            .collect();
        let want: Vec<(String, Vec<String>)> = LANGUAGES
            .iter()
            .map(|s| {
                (
                    s.name.to_owned(),
                    s.packages.iter().map(|p| p.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(
            lines, want,
            "scripts/bootstrap's language block must list each language's packages as its registry entry does"
        );
    }
}
