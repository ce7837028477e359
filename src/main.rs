use clap::Parser;

use archgate::cli::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    archgate::tls::install_crypto_provider();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve(args) => match archgate::serve::run(args).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("archgate serve: {e:#}");
                archgate::check::EXIT_TROUBLE
            }
        },
        Command::Check(args) => archgate::check::run(args).await,
        Command::Certs(args) => archgate::run_certs(&args),
    };
    std::process::ExitCode::from(code as u8)
}
