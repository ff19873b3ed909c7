//! The command line: one subcommand per file.
//!
//! Exit codes: 0 ok, 1 error, 3 invalid policy.

pub mod check;
pub mod consent;
pub mod demo;
pub mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Consentry: a privacy gateway in front of a CRM's HTTP/JSON API.
#[derive(Debug, Parser)]
#[command(name = "consentry", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(Box<serve::ServeArgs>),
    /// Check a policy directory: print every error, exit 3 if it does not compile.
    Check {
        /// The policy directory.
        dir: PathBuf,
        /// `human` or `json`.
        #[arg(long, default_value = "human")]
        error_format: String,
    },
    /// Record consent events, read histories, export or erase subjects.
    Consent {
        /// The configuration file and the consent store.
        #[command(flatten)]
        store: serve::StoreArgs,
        #[command(subcommand)]
        command: consent::ConsentCommand,
    },
    /// Start a sample CRM, seed consent and run the gateway in front of it.
    Demo(demo::DemoArgs),
}

/// Runs the command line.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Check { dir, error_format } => check::run(&dir, error_format == "json"),
        Command::Consent { store, command } => {
            let _log = init_tracing();
            let config = match store.config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime_builder(1)
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(consent::run(&config, command)))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo(args) => demo::run(args),
    }
}

/// The builder of a multi-threaded tokio runtime with `threads` worker threads, everything
/// enabled.
fn runtime_builder(threads: usize) -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(threads).enable_all();
    builder
}

/// The runtime of `serve` and `demo` besides the lanes ([`crate::lanes`], which serve the
/// proxy's connections): the accept loop, the admin API, consent store lookups and background
/// tasks. Two threads, so that admin work (a large consent import) does not hold up accepting
/// connections; they sleep while there is nothing else to do.
pub fn main_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(runtime_builder(2).thread_name("consentry-main").build()?)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as JSON when
/// `CONSENTRY_LOG_FORMAT=json`, in colour only on a terminal. Lines are written in batches
/// (see [`crate::ops::log`]); keep the guard until exit, dropping it writes what is left.
pub fn init_tracing() -> Option<crate::ops::log::FlushGuard> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("CONSENTRY_LOG_FORMAT").is_ok_and(|v| v == "json");
    let ansi = std::io::stderr().is_terminal();
    let writer = crate::ops::log::BatchedStderr::default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer.clone())
        .with_timer(crate::ops::log::SecondClock);
    let installed = if json {
        builder.json().try_init()
    } else {
        builder.fmt_fields(crate::ops::log::PlainFields).try_init()
    };
    installed.ok().map(|()| crate::ops::log::FlushGuard(writer))
}
