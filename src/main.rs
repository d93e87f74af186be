use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = squeeze::cli::Cli::parse();
    match squeeze::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", squeeze::cli::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
