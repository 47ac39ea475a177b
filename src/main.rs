//! The guardlake binary: parse the command line, set up logs, run, exit with a documented code.

use std::io::IsTerminal;
use std::path::Path;

use clap::Parser;
use guardlake::cli::{Cli, Command, CommitArgs, CompactArgs, CoverageArgs, RunArgs, ShardArgs};
use guardlake::config::{Config, ValidatedConfig};
use guardlake::error::{exit_code, RunError};
use guardlake::run::{Backfill, RunOptions};

fn init_logs() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("GUARDLAKE_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,aws_config=error,aws_smithy_runtime=warn")
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(guardlake::logs::ScrubbedStderr);
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

/// The config file (if any) overridden by flags and environment; exits 2 when unreadable.
fn merged_config(file: Option<&Path>, flags: Config) -> Config {
    let base = match file {
        Some(path) => Config::from_file(path).unwrap_or_else(|err| {
            eprintln!("error: {err}");
            std::process::exit(exit_code::CONFIG);
        }),
        None => Config::default(),
    };
    base.overridden_by(flags)
}

/// A config, validated; exits 2 when bad.
fn validated(config: Config) -> ValidatedConfig {
    config.validate().unwrap_or_else(|err| {
        eprintln!("error: {err}");
        std::process::exit(exit_code::CONFIG);
    })
}

fn load_config(file: Option<&Path>, flags: Config) -> ValidatedConfig {
    validated(merged_config(file, flags))
}

/// The runtime, with one worker per thread of [`guardlake::cpu::threads`].
fn async_runtime() -> tokio::runtime::Runtime {
    guardlake::cpu::tune_allocator();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(guardlake::cpu::threads())
        .enable_all()
        .build()
        .unwrap_or_else(|err| {
            eprintln!("error: cannot start the async runtime: {err}");
            std::process::exit(exit_code::FAILED);
        })
}

/// Prints a failed command's error and returns its exit code.
fn failed(err: &RunError) -> i32 {
    eprintln!("error: {err}");
    match err {
        RunError::Config(_) => exit_code::CONFIG,
        RunError::Locked(_) => exit_code::LOCKED,
        RunError::Deferred(_) => exit_code::DEFERRED,
        _ => exit_code::FAILED,
    }
}

fn print_schema(args: &guardlake::cli::SchemaArgs) -> i32 {
    use guardlake::normalize::schema::{tables, Format};
    let selected: Vec<_> = tables()
        .into_iter()
        .filter(|t| args.table.as_deref().is_none_or(|name| name == t.table))
        .collect();
    if selected.is_empty() {
        let names: Vec<&str> = tables().iter().map(|t| t.table.as_str()).collect();
        eprintln!(
            "error: invalid `--table`: {:?} is not a table; use one of {}",
            args.table.as_deref().unwrap_or_default(),
            names.join(", ")
        );
        return exit_code::CONFIG;
    }
    for table in selected {
        match args.format {
            Format::Ddl => println!("{}", table.ddl(&args.database, &args.location)),
            Format::Markdown => println!("{}", table.markdown()),
            Format::Json => println!(
                "{}",
                serde_json::to_string_pretty(&table.json_schema()).unwrap_or_default()
            ),
        }
    }
    exit_code::OK
}

/// Started by Lambda: serve invocations, configured like `guardlake run` from the environment.
fn serve_lambda() -> ! {
    init_logs();
    let Ok(Cli {
        command: Command::Run(args),
        threads,
        ..
    }) = Cli::try_parse_from(["guardlake", "run"])
    else {
        eprintln!(
            "error: the function's GUARDLAKE_* environment is not valid; see guardlake run --help"
        );
        std::process::exit(exit_code::CONFIG);
    };
    let base = merged_config(args.config.as_deref(), args.options.clone());
    // Fail the cold start, not every invocation, when the configuration is wrong.
    validated(base.clone());
    if let Some(threads) = threads {
        guardlake::cpu::set_threads(usize::from(threads));
    }
    let runtime = async_runtime();
    match runtime.block_on(guardlake::lambda::serve(base, args.s3.path_style())) {
        Ok(()) => std::process::exit(exit_code::OK),
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(exit_code::FAILED);
        }
    }
}

fn main() {
    // Lambda starts the bootstrap without arguments and with its runtime API address set.
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() && std::env::args_os().len() == 1 {
        serve_lambda();
    }
    let cli = Cli::parse();
    init_logs();
    if let Some(threads) = cli.threads {
        guardlake::cpu::set_threads(usize::from(threads));
    }
    if let Some(point) = cli.crash_at {
        let known: Vec<String> = guardlake::state::CrashPoint::all()
            .into_iter()
            .chain(guardlake::state::CrashPoint::alerts())
            .map(guardlake::state::CrashPoint::name)
            .collect();
        if !known.contains(&point) {
            eprintln!(
                "error: GUARDLAKE_CRASH_AT={point:?} is not a crash point; one of: {}",
                known.join(", ")
            );
            std::process::exit(exit_code::CONFIG);
        }
        guardlake::state::set_crash_point(point);
    }
    let runtime = async_runtime();
    let code = match cli.command {
        Command::Schema(args) => print_schema(&args),
        Command::Run(args) => run_command(&args, &runtime),
        Command::Compact(args) => compact_command(&args, &runtime),
        Command::Plan(args) => plan_command(&args, &runtime),
        Command::Shard(args) => shard_command(&args, &runtime),
        Command::PlanTrail(args) => plan_trail_command(&args, &runtime),
        Command::Coverage(args) => coverage_command(&args, &runtime),
        Command::Canary(args) => canary_command(&args, &runtime),
        Command::Alerts(args) => alerts_command(&args, &runtime),
        Command::Commit(args) => commit_command(&args, &runtime),
    };
    std::process::exit(code);
}

/// `guardlake run`: its exit code.
fn run_command(args: &RunArgs, runtime: &tokio::runtime::Runtime) -> i32 {
    let config = load_config(args.config.as_deref(), args.options.clone());
    let backfill = match (args.since, args.until) {
        (Some(since), Some(until)) if since < until => Some(Backfill {
            since_ms: since.timestamp_millis(),
            until_ms: until.timestamp_millis(),
        }),
        (Some(_), Some(_)) => {
            eprintln!("error: invalid `--since`/`--until`: --since must be before --until");
            std::process::exit(exit_code::CONFIG);
        }
        _ => None,
    };
    let options = RunOptions {
        s3_path_style: args.s3.path_style(),
        backfill,
        compact: args.compact,
        quiet: false,
    };
    match runtime.block_on(guardlake::run::run(config, options)) {
        Ok(result) if result.all_ok() => exit_code::OK,
        Ok(_) => exit_code::PARTIAL,
        Err(err) => failed(&err),
    }
}

/// `guardlake compact`: its exit code.
fn compact_command(args: &CompactArgs, runtime: &tokio::runtime::Runtime) -> i32 {
    let config = load_config(args.config.as_deref(), args.as_config());
    let options = RunOptions {
        s3_path_style: args.s3.path_style(),
        ..RunOptions::default()
    };
    match runtime.block_on(guardlake::compact::run(
        config,
        options,
        args.table.clone(),
        args.dt,
    )) {
        Ok(merged) => {
            println!("Compacted {} partition(s).", merged.len());
            for m in merged {
                println!(
                    "  {} dt={}: {} files -> {} ({} rows)",
                    m.table, m.dt, m.files_before, m.files_after, m.rows
                );
            }
            exit_code::OK
        }
        Err(err) => failed(&err),
    }
}

/// The config and options of a distributed step: a run's, without a backfill or a dry run.
fn step_config(args: &RunArgs, step: &str) -> (ValidatedConfig, RunOptions) {
    if args.since.is_some() || args.options.dry_run == Some(true) || args.compact {
        eprintln!("error: `guardlake {step}` takes no --since/--until, --dry-run or --compact; use `guardlake run` for those");
        std::process::exit(exit_code::CONFIG);
    }
    let config = load_config(args.config.as_deref(), args.options.clone());
    let options = RunOptions {
        s3_path_style: args.s3.path_style(),
        ..RunOptions::default()
    };
    (config, options)
}

/// `guardlake plan`: prints the plan as JSON.
fn plan_command(args: &RunArgs, runtime: &tokio::runtime::Runtime) -> i32 {
    let (config, options) = step_config(args, "plan");
    match runtime.block_on(guardlake::distributed::plan(config, options)) {
        Ok(plan) => {
            println!("{}", serde_json::to_string(&plan).unwrap_or_default());
            exit_code::OK
        }
        Err(err) => failed(&err),
    }
}

/// `guardlake canary`: requests the canaries; 3 when some could not be.
fn canary_command(args: &RunArgs, runtime: &tokio::runtime::Runtime) -> i32 {
    let (config, options) = step_config(args, "canary");
    let finding_type = config.canary_type.clone();
    match runtime.block_on(guardlake::canary::request(config, options)) {
        Ok(done) => {
            println!(
                "Requested {} canary sample(s) of {finding_type}.",
                done.canaries.len()
            );
            for (account, region, failure) in &done.failed {
                println!(
                    "  not in {account} {region}: {} ({}): {}",
                    failure.status.as_str(),
                    failure.class,
                    failure.message
                );
            }
            if done.failed.is_empty() {
                exit_code::OK
            } else {
                exit_code::PARTIAL
            }
        }
        Err(err) => failed(&err),
    }
}

/// `guardlake alerts [--dry-run]`: 3 when some alerts are still undelivered.
fn alerts_command(args: &RunArgs, runtime: &tokio::runtime::Runtime) -> i32 {
    let config = load_config(args.config.as_deref(), args.options.clone());
    let options = RunOptions {
        s3_path_style: args.s3.path_style(),
        ..RunOptions::default()
    };
    use guardlake::pipeline::alerting::{command, Command as Alerts};
    match runtime.block_on(command(config, options)) {
        Ok(Alerts::DryRun(events)) => {
            for event in &events {
                println!("{event}");
            }
            eprintln!(
                "{} event(s) the last run would emit; nothing sent.",
                events.len()
            );
            exit_code::OK
        }
        Ok(Alerts::Delivered(d)) => {
            println!(
                "Alerts: {} sent, {} pending, {} failed.",
                d.sent, d.pending, d.failed
            );
            if let Some((code, message)) = &d.error {
                println!("  first error: {code}: {message}");
            }
            if d.pending + d.failed == 0 {
                exit_code::OK
            } else {
                exit_code::PARTIAL
            }
        }
        Err(err) => failed(&err),
    }
}

/// `guardlake coverage --html FILE`: writes the coverage page.
fn coverage_command(args: &CoverageArgs, runtime: &tokio::runtime::Runtime) -> i32 {
    let config = load_config(args.config.as_deref(), args.as_config());
    let options = RunOptions {
        s3_path_style: args.s3.path_style(),
        ..RunOptions::default()
    };
    match runtime.block_on(guardlake::page::write(
        config, options, &args.html, args.days,
    )) {
        Ok(cells) => {
            println!(
                "Wrote {}: {cells} account × region cell(s).",
                args.html.display()
            );
            exit_code::OK
        }
        Err(err) => failed(&err),
    }
}

/// `guardlake plan-trail`: prints where the CloudTrail batches are, as JSON.
fn plan_trail_command(args: &CommitArgs, runtime: &tokio::runtime::Runtime) -> i32 {
    let (config, options) = step_config(&args.run, "plan-trail");
    let step = guardlake::distributed::trail::plan_trail(config, options, &args.run_id);
    match runtime.block_on(step) {
        Ok(plan) => {
            println!("{}", serde_json::to_string(&plan).unwrap_or_default());
            exit_code::OK
        }
        Err(err) => failed(&err),
    }
}

/// `guardlake shard`: stages one shard; 3 when some of its targets failed.
fn shard_command(args: &ShardArgs, runtime: &tokio::runtime::Runtime) -> i32 {
    let (config, options) = step_config(&args.run, "shard");
    let step = guardlake::distributed::shard(config, options, &args.run_id, args.shard);
    match runtime.block_on(step) {
        Ok(done) => {
            let summary = done.summary(&args.run_id);
            println!("{summary}");
            let failed = summary["targets_failed"].as_u64().unwrap_or_default();
            if failed == 0 {
                exit_code::OK
            } else {
                exit_code::PARTIAL
            }
        }
        Err(err) => failed(&err),
    }
}

/// `guardlake commit`: publishes the run; exit codes as `run`'s.
fn commit_command(args: &CommitArgs, runtime: &tokio::runtime::Runtime) -> i32 {
    let (config, options) = step_config(&args.run, "commit");
    match runtime.block_on(guardlake::distributed::commit(
        config,
        options,
        &args.run_id,
    )) {
        Ok(result) if result.all_ok() => exit_code::OK,
        Ok(_) => exit_code::PARTIAL,
        Err(err) => failed(&err),
    }
}
