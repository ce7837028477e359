//! The README's configuration reference is the programs' own `--help`: fail when they drift.

use clap::CommandFactory;
use clap::error::ErrorKind;

use archgate::cli::Cli;

/// Exactly what `archgate <sub> --help` prints: clap lays a command's help out long only where
/// some argument has a long help of its own, so rendering the long help for every subcommand
/// would not be what a user sees.
fn help(sub: &str) -> String {
    let shown = Cli::command()
        .try_get_matches_from(["archgate", sub, "--help"])
        .expect_err("--help ends parsing with the help text");
    assert_eq!(shown.kind(), ErrorKind::DisplayHelp, "{shown}");
    shown.render().to_string().trim_end().to_string()
}

fn section<'a>(readme: &'a str, name: &str) -> &'a str {
    let start = format!("<!-- help:{name} -->\n```text\n");
    let end = format!("\n```\n<!-- /help:{name} -->");
    let from = readme
        .find(&start)
        .unwrap_or_else(|| panic!("README lacks {start:?}"))
        + start.len();
    let to = readme[from..]
        .find(&end)
        .unwrap_or_else(|| panic!("README lacks {end:?}"))
        + from;
    &readme[from..to]
}

/// `ARCHGATE_BLESS=1 cargo test --test readme` rewrites the blocks after a flag changes.
#[test]
fn readme_help_matches_the_cli() {
    let mut readme = std::fs::read_to_string("README.md").unwrap();
    if std::env::var_os("ARCHGATE_BLESS").is_some() {
        for sub in ["serve", "check", "scan", "certs"] {
            let old = section(&readme, sub).to_string();
            readme = readme.replacen(&old, &help(sub), 1);
        }
        std::fs::write("README.md", &readme).unwrap();
    }
    for sub in ["serve", "check", "scan", "certs"] {
        let want = help(sub);
        let have = section(&readme, sub);
        assert_eq!(
            have.trim_end(),
            want,
            "README's `archgate {sub} --help` block is out of date; paste the new output"
        );
    }
}

#[test]
fn readme_starts_with_the_two_commands() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let first_blocks: Vec<&str> = readme.split("```sh\n").skip(1).take(2).collect();
    assert!(
        first_blocks[0].starts_with("cargo run -- serve --self-signed"),
        "{}",
        first_blocks[0]
    );
    assert!(
        first_blocks[1].starts_with("bash .ci/test"),
        "{}",
        first_blocks[1]
    );
    let ci = std::fs::read_to_string(".ci/run").unwrap();
    assert!(
        ci.contains("bash .ci/test"),
        ".ci/run must call the README's test command"
    );
}
