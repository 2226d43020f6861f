//! TypeScript: esbuild (pinned in `runtime/node`) strips the types in a build sandbox, into
//! the build cache like a compiler's output; Node runs the cached result.

use super::javascript::is_es_module;
use super::{Recipe, Source, SourceOptions, Spec};

pub const SPEC: Spec = Spec {
    name: "typescript",
    aliases: &["ts"],
    compat_aliases: &["bun-ts", "bun-typescript"],
    doc: "types stripped by esbuild (pinned), cached, then Node; CommonJS or ES module as for `js`",
    packages: &["nodejs"],
    // Node's version, and only when esbuild is there too.
    version: &[
        "/bin/sh",
        "-c",
        "\"{runtime}/node/node_modules/.bin/esbuild\" --version >/dev/null && node -p process.versions.node",
    ],
    libraries: Some(&[
        "/bin/sh",
        "-c",
        "node -p \"require('module').builtinModules.filter(m => !m.startsWith('_')).join('\\n')\" && echo esbuild $(\"{runtime}/node/node_modules/.bin/esbuild\" --version)",
    ]),
    file: "main.ts",
    source: Some(source),
    // The transform is a build like a compiler's: cached by source, so code run again
    // (a retry, a loop of calls) starts Node at once.
    recipe: Recipe::Compile {
        build: &[
            "{runtime}/node/node_modules/.bin/esbuild",
            "{file}",
            "--format={format}",
            "--platform=node",
            "--target=node18",
            "--log-level=warning",
            "--outfile={out}/{js}",
        ],
        run: &["node", "{build}/{js}"],
        toolchain_cache: None,
    },
    ..Spec::DEFAULT
};

fn source(code: &str, _: &SourceOptions) -> Source {
    let vars = if is_es_module(code) {
        vec![("format", "esm"), ("js", "main.mjs")]
    } else {
        vec![("format", "cjs"), ("js", "main.cjs")]
    };
    Source {
        file: "main.ts".into(),
        text: code.into(),
        vars,
    }
}
