//! Python: a Jupyter kernel (ipykernel) per session, in the virtual environment
//! `scripts/bootstrap` builds from `runtime/python/requirements.lock`.

use super::{MountSpec, Recipe, Spec};

pub const SPEC: Spec = Spec {
    name: "python",
    aliases: &["py"],
    compat_aliases: &["python3"],
    doc: "a Jupyter kernel (ipykernel) per session, in the sandbox, driven from Rust over ZMQ `ipc`: variables, imports and files persist; the last expression's value is appended to stdout; `plt.show()` and other image outputs are saved as `figure-<n>.png` and returned in `files`; exceptions give `status: error` and a plain traceback in stderr; `sys.argv[1:]` are the `args`",
    packages: &["python3", "python3-venv"],
    required: true,
    path: &["{runtime}/python/bin"],
    env: &[
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("PYTHONUNBUFFERED", "1"),
        ("MPLBACKEND", "Agg"),
        // matplotlib's writable config directory, in the private /tmp.
        ("MPLCONFIGDIR", "/tmp/matplotlib"),
    ],
    // matplotlib's font list, built at bootstrap: without it every fresh sandbox would
    // rebuild it (seconds) and warn about an unwritable config directory.
    mounts: &[MountSpec {
        host: "{runtime}/mplconfig/fontlist-*.json",
        inside: Some("/tmp/matplotlib/{name}"),
    }],
    version: &[
        "{runtime}/python/bin/python",
        "-c",
        "import platform; print(platform.python_version())",
    ],
    libraries: Some(&[
        "{runtime}/python/bin/python",
        "-c",
        "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'], d.version)",
    ]),
    file: "main.py",
    recipe: Recipe::Kernel,
    ..Spec::DEFAULT
};
