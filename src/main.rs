use clap::CommandFactory;

use archgate::cli::{Cli, Command};

/// mimalloc, not the C library's malloc: a warm review is mostly small allocations, and the
/// shipped image links musl, whose malloc is slow under them (BENCHMARKS.md, "Warm path").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    archgate::tls::install_crypto_provider();
    let cli = Cli::from_command_line();
    let code = match cli.command {
        Command::Serve(args) => match archgate::serve::run(args).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("archgate serve: {}", chain(&e));
                archgate::check::EXIT_TROUBLE
            }
        },
        Command::Check(args) => archgate::check::run(args).await,
        Command::Scan(args) => archgate::scan::run(args).await,
        Command::Certs(args) => archgate::run_certs(&args),
        Command::Completions(args) => {
            let mut command = Cli::command();
            clap_complete::generate(args.shell, &mut command, "archgate", &mut std::io::stdout());
            0
        }
    };
    std::process::ExitCode::from(code as u8)
}

/// The error and its causes, each said once: many errors already quote their source in their own
/// message (`cannot read config file x: No such file (os error 2)`), and anyhow's `{:#}` would
/// repeat it.
fn chain(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}
