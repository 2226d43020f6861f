//! JavaScript on Node: CommonJS, or an ES module when the code uses module syntax.

use super::{Recipe, Source, SourceOptions, Spec};

pub const SPEC: Spec = Spec {
    name: "javascript",
    aliases: &["js", "node"],
    compat_aliases: &["nodejs", "node-js", "node-javascript", "bun", "bun-js"],
    doc: "Node; CommonJS, or ES module when the code uses `import`/`export`/top-level `await`",
    packages: &["nodejs"],
    version: &["node", "-p", "process.versions.node"],
    libraries: Some(&[
        "node",
        "-p",
        "require('module').builtinModules.filter(m => !m.startsWith('_')).join('\\n')",
    ]),
    file: "main.cjs",
    source: Some(source),
    recipe: Recipe::Interpret {
        run: &["node", "{file}"],
    },
    ..Spec::DEFAULT
};

fn source(code: &str, _: &SourceOptions) -> Source {
    Source {
        file: if is_es_module(code) {
            "main.mjs"
        } else {
            "main.cjs"
        }
        .into(),
        text: code.into(),
        vars: Vec::new(),
    }
}

/// ES module syntax: a top-level `import`/`export` statement or a top-level `await`.
pub(super) fn is_es_module(code: &str) -> bool {
    code.lines().any(|line| {
        let starts = |kw: &str| {
            line.strip_prefix(kw)
                .is_some_and(|rest| rest.starts_with([' ', '{', '*', '\t']))
        };
        (starts("import") && !line.starts_with("import(")) || starts("export") || starts("await")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn es_module_syntax_is_detected() {
        assert!(is_es_module("import fs from 'fs';"));
        assert!(is_es_module("import { readFileSync } from 'node:fs'"));
        assert!(is_es_module("export const x = 1;"));
        assert!(is_es_module("await new Promise(r => setTimeout(r, 1));"));
        assert!(!is_es_module(
            "const fs = require('fs');\nconsole.log('import x')"
        ));
        assert!(!is_es_module("import('fs').then(() => {})"));
    }
}
