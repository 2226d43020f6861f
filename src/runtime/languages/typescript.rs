//! TypeScript: esbuild (pinned in `runtime/node`) strips the types, then Node runs the
//! result, in one sandbox (~5 ms for the transform).

use super::javascript::is_es_module;
use super::{Recipe, Source, SourceOptions, Spec};

pub const SPEC: Spec = Spec {
    name: "typescript",
    aliases: &["ts"],
    compat_aliases: &["bun-ts", "bun-typescript"],
    doc: "types stripped by esbuild (pinned), then Node, in one sandbox; CommonJS or ES module as for `js`",
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
    recipe: Recipe::Interpret {
        run: &[
            "/bin/sh",
            "-c",
            "\"{runtime}/node/node_modules/.bin/esbuild\" {file} --format={format} --platform=node --target=node18 --log-level=warning --outfile=/tmp/{js} && exec node /tmp/{js} \"$@\"",
            "main.ts",
        ],
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
