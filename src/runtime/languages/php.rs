//! PHP: Debian's `php-cli`. Its extensions are enabled by files in `/etc/php`; errors go
//! to stderr whatever `php.ini` says.

use super::{MountSpec, Recipe, Spec};

pub const SPEC: Spec = Spec {
    name: "php",
    doc: "`php` (Debian's `php-cli`); the code is a PHP file, so it starts with `<?php`",
    packages: &["php-cli"],
    mounts: &[MountSpec::same("/etc/php")],
    version: &["php", "-r", "echo PHP_VERSION, PHP_EOL;"],
    libraries: Some(&[
        "php",
        "-r",
        "foreach (get_loaded_extensions() as $e) echo $e, ' ', phpversion($e), PHP_EOL;",
    ]),
    file: "main.php",
    recipe: Recipe::Interpret {
        run: &[
            "php",
            "-d",
            "display_errors=stderr",
            "-d",
            "log_errors=0",
            "{file}",
        ],
    },
    ..Spec::DEFAULT
};
