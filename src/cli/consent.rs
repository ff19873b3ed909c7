//! `consentry consent ...`: record consent events and read a subject's history from the
//! command line, against the embedded store `DATA_DIR/consent.db`.
//!
//! It owns argument shapes and output only. It must never write to the store other than by
//! appending events (a running gateway notices within a fraction of a second through the
//! store's change watcher), and an import is all or nothing.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};

use crate::consent::event::{
    ALL_PURPOSES, ConsentEvent, EventKind, format_rfc3339_ms, now_ms, parse_csv, parse_json_lines,
    parse_rfc3339_ms,
};
use crate::consent::sqlite::{SqliteStore, SqliteStoreOptions};
use crate::consent::store::ConsentStore;

/// The store file inside the data directory.
pub const STORE_FILE: &str = "consent.db";

/// Consent subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum ConsentCommand {
    /// Record that SUBJECT granted consent for PURPOSE.
    Grant {
        /// The data subject's id.
        subject: String,
        /// The purpose name.
        purpose: String,
        /// When the consent lapses (RFC 3339).
        #[arg(long, value_name = "RFC3339")]
        expires: Option<String>,
        /// The channel it came through.
        #[arg(long, default_value = "cli")]
        source: String,
        /// A reference to the proof.
        #[arg(long)]
        proof: Option<String>,
    },
    /// Record that SUBJECT withdrew consent for PURPOSE.
    Withdraw {
        /// The data subject's id.
        subject: String,
        /// The purpose name.
        purpose: String,
        /// The channel it came through.
        #[arg(long, default_value = "cli")]
        source: String,
        /// A reference to the proof.
        #[arg(long)]
        proof: Option<String>,
    },
    /// Record that SUBJECT objected to PURPOSE (legitimate interest).
    Object {
        /// The data subject's id.
        subject: String,
        /// The purpose name.
        purpose: String,
        /// The channel it came through.
        #[arg(long, default_value = "cli")]
        source: String,
        /// A reference to the proof.
        #[arg(long)]
        proof: Option<String>,
    },
    /// Record that SUBJECT opted out of sale or sharing (of PURPOSE, or of all: `*`).
    OptOut {
        /// The data subject's id.
        subject: String,
        /// The purpose name; `*` for every sale or sharing purpose.
        #[arg(default_value = ALL_PURPOSES)]
        purpose: String,
        /// The channel it came through.
        #[arg(long, default_value = "cli")]
        source: String,
        /// A reference to the proof.
        #[arg(long)]
        proof: Option<String>,
    },
    /// Import events from a CSV or JSON lines file, all or nothing.
    Import {
        /// The file to read.
        file: PathBuf,
        /// The file format; by default taken from the extension (.csv, .jsonl, .ndjson).
        #[arg(long, value_enum)]
        format: Option<ImportFormat>,
        /// The source recorded for lines that name none.
        #[arg(long, default_value = "import")]
        source: String,
    },
    /// Print every event of SUBJECT, oldest first.
    History {
        /// The data subject's id.
        subject: String,
    },
}

/// Import file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportFormat {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl ImportFormat {
    /// The format a file name implies, if any.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Self::Csv),
            "jsonl" | "ndjson" => Some(Self::Jsonl),
            _ => None,
        }
    }
}

/// Runs one consent subcommand against `DATA_DIR/consent.db` (creating the directory and the
/// file if needed).
pub async fn run(data_dir: &Path, cmd: ConsentCommand) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let path = data_dir.join(STORE_FILE);
    // A one-shot command has no cache to keep fresh: no change watcher.
    let options = SqliteStoreOptions {
        watch_interval: None,
        ..SqliteStoreOptions::default()
    };
    let store = SqliteStore::open_with(&path, options)
        .await
        .with_context(|| format!("cannot open the consent store {}", path.display()))?;
    let result = execute(&store, cmd).await;
    store.close().await;
    result
}

async fn execute(store: &SqliteStore, cmd: ConsentCommand) -> anyhow::Result<()> {
    let at_ms = now_ms();
    let one = |subject: String, purpose: String, kind, source: String, proof| ConsentEvent {
        subject,
        purpose,
        kind,
        at_ms,
        expires_at_ms: None,
        source: Some(source),
        proof,
    };
    let event = match cmd {
        ConsentCommand::Grant {
            subject,
            purpose,
            expires,
            source,
            proof,
        } => {
            let expires_at_ms = expires
                .as_deref()
                .map(parse_rfc3339_ms)
                .transpose()
                .map_err(anyhow::Error::msg)
                .context("--expires")?;
            if expires_at_ms.is_some_and(|x| x <= at_ms) {
                bail!("--expires is in the past");
            }
            ConsentEvent {
                expires_at_ms,
                ..one(subject, purpose, EventKind::Granted, source, proof)
            }
        }
        ConsentCommand::Withdraw {
            subject,
            purpose,
            source,
            proof,
        } => one(subject, purpose, EventKind::Withdrawn, source, proof),
        ConsentCommand::Object {
            subject,
            purpose,
            source,
            proof,
        } => one(subject, purpose, EventKind::Objected, source, proof),
        ConsentCommand::OptOut {
            subject,
            purpose,
            source,
            proof,
        } => one(subject, purpose, EventKind::OptedOut, source, proof),
        ConsentCommand::Import {
            file,
            format,
            source,
        } => return import(store, &file, format, &source, at_ms).await,
        ConsentCommand::History { subject } => return history(store, &subject).await,
    };
    event.validate()?;
    store.append(std::slice::from_ref(&event)).await?;
    println!(
        "recorded: {} {} {}",
        event.kind,
        event.purpose,
        format_rfc3339_ms(event.at_ms)
    );
    Ok(())
}

async fn import(
    store: &SqliteStore,
    file: &Path,
    format: Option<ImportFormat>,
    source: &str,
    now_ms: i64,
) -> anyhow::Result<()> {
    let Some(format) = format.or_else(|| ImportFormat::from_path(file)) else {
        bail!(
            "cannot tell the format of {} from its extension: use --format csv|jsonl",
            file.display()
        );
    };
    let text = tokio::fs::read_to_string(file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?;
    let parsed = match format {
        ImportFormat::Csv => parse_csv(&text, now_ms, Some(source)),
        ImportFormat::Jsonl => parse_json_lines(&text, now_ms, Some(source)),
    };
    let events = parsed.with_context(|| format!("{}: nothing imported", file.display()))?;
    store.append(&events).await?;
    println!("imported {} events", events.len());
    Ok(())
}

async fn history(store: &SqliteStore, subject: &str) -> anyhow::Result<()> {
    let events = store.history(subject).await?;
    if events.is_empty() {
        println!("no events");
    }
    for e in events {
        let mut line = format!(
            "{}  {:<9}  {}",
            format_rfc3339_ms(e.at_ms),
            e.kind,
            e.purpose
        );
        if let Some(x) = e.expires_at_ms {
            line.push_str(&format!("  expires={}", format_rfc3339_ms(x)));
        }
        if let Some(s) = &e.source {
            line.push_str(&format!("  source={s}"));
        }
        if let Some(p) = &e.proof {
            line.push_str(&format!("  proof={p}"));
        }
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ConsentCommand,
    }

    fn parse(args: &[&str]) -> ConsentCommand {
        Cli::try_parse_from(std::iter::once("consent").chain(args.iter().copied()))
            .unwrap()
            .cmd
    }

    #[test]
    fn arguments() {
        assert_eq!(
            parse(&["opt-out", "42"]),
            ConsentCommand::OptOut {
                subject: "42".into(),
                purpose: "*".into(),
                source: "cli".into(),
                proof: None,
            }
        );
        assert_eq!(
            parse(&[
                "grant",
                "42",
                "marketing",
                "--expires",
                "2030-01-01T00:00:00Z",
                "--proof",
                "p",
            ]),
            ConsentCommand::Grant {
                subject: "42".into(),
                purpose: "marketing".into(),
                expires: Some("2030-01-01T00:00:00Z".into()),
                source: "cli".into(),
                proof: Some("p".into()),
            }
        );
        assert_eq!(
            parse(&["import", "x.txt", "--format", "jsonl"]),
            ConsentCommand::Import {
                file: "x.txt".into(),
                format: Some(ImportFormat::Jsonl),
                source: "import".into(),
            }
        );
        assert!(Cli::try_parse_from(["consent", "withdraw", "42"]).is_err());
    }

    #[test]
    fn format_from_extension() {
        for (name, want) in [
            ("a.csv", Some(ImportFormat::Csv)),
            ("a.CSV", Some(ImportFormat::Csv)),
            ("a.jsonl", Some(ImportFormat::Jsonl)),
            ("a.ndjson", Some(ImportFormat::Jsonl)),
            ("a.json", None),
            ("a", None),
        ] {
            assert_eq!(ImportFormat::from_path(Path::new(name)), want, "{name}");
        }
    }
}
