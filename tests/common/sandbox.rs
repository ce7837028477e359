//! Running the built `archgate` binary as CI would, untouched by the developer's environment.

use std::path::Path;
use std::process::Command;

/// `archgate check` with `HOME` and `DOCKER_CONFIG` at `home` (an empty temporary directory),
/// no `ARCHGATE_*` settings, no proxies and no `RUST_LOG` from the environment running the tests.
pub fn check_command(binary: &str, home: &Path, docker_config: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("check")
        .env("HOME", home)
        .env("DOCKER_CONFIG", docker_config)
        .env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("ARCHGATE_") || name.to_ascii_lowercase().ends_with("_proxy") {
            command.env_remove(name);
        }
    }
    command
}
