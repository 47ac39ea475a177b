//! The guardlake binary: parse the command line, set up logs, run, exit with a documented code.

use std::io::IsTerminal;

use clap::Parser;
use guardlake::cli::{Cli, Command};
use guardlake::config::Config;
use guardlake::error::{exit_code, RunError};

fn init_logs() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("GUARDLAKE_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,aws_config=error,aws_smithy_runtime=warn")
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.compact().init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    }
}

fn main() {
    let cli = Cli::parse();
    init_logs();
    let Command::Run(args) = cli.command;
    let file = match &args.config {
        Some(path) => match Config::from_file(path) {
            Ok(config) => config,
            Err(err) => {
                eprintln!("error: {err}");
                std::process::exit(exit_code::CONFIG);
            }
        },
        None => Config::default(),
    };
    let config = match file.overridden_by(args.as_config()).validate() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(exit_code::CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            std::process::exit(exit_code::FAILED);
        }
    };
    let code = match runtime.block_on(guardlake::run::run(config, args.s3_path_style())) {
        Ok(result) if result.all_ok() => exit_code::OK,
        Ok(result) if result.published => exit_code::PARTIAL,
        Ok(_) => exit_code::PARTIAL,
        Err(err @ RunError::Config(_)) => {
            eprintln!("error: {err}");
            exit_code::CONFIG
        }
        Err(err) => {
            eprintln!("error: run failed, nothing published: {err}");
            exit_code::FAILED
        }
    };
    std::process::exit(code);
}
