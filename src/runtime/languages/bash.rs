//! bash, with `set -euo pipefail` first when `BASH_STRICT_MODE` is on.

use super::{Recipe, Source, SourceOptions, Spec};

pub const SPEC: Spec = Spec {
    name: "bash",
    doc: "bash, with `set -euo pipefail` first (`BASH_STRICT_MODE`); every language's tools are on `PATH`",
    packages: &["bash"],
    required: true,
    version: &["/bin/bash", "-c", "echo ${BASH_VERSION%%(*}"],
    file: "main.sh",
    source: Some(source),
    recipe: Recipe::Interpret {
        run: &["/bin/bash", "{file}"],
    },
    ..Spec::DEFAULT
};

fn source(code: &str, options: &SourceOptions) -> Source {
    Source {
        file: "main.sh".into(),
        text: if options.bash_strict {
            with_strict_mode(code)
        } else {
            code.into()
        },
        vars: Vec::new(),
    }
}

/// `set -euo pipefail` as the first command, after a shebang line if there is one.
fn with_strict_mode(code: &str) -> String {
    const STRICT: &str = "set -euo pipefail\n";
    match code.strip_prefix("#!") {
        Some(_) => match code.split_once('\n') {
            Some((shebang, rest)) => format!("{shebang}\n{STRICT}{rest}"),
            None => format!("{code}\n{STRICT}"),
        },
        None => format!("{STRICT}{code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_mode_goes_after_the_shebang() {
        assert_eq!(with_strict_mode("echo hi"), "set -euo pipefail\necho hi");
        assert_eq!(
            with_strict_mode("#!/bin/bash\necho hi"),
            "#!/bin/bash\nset -euo pipefail\necho hi"
        );
    }
}
