//! `consentry consent ...`: record consent events, read a subject's state and history, export
//! or erase a subject from the command line, against the configured store (by default the
//! embedded `DATA_DIR/consent.db`).
//!
//! It owns argument shapes and output only. It must never write to the store other than by
//! appending events (a running gateway notices within a fraction of a second through the
//! store's change watcher), and an import is all or nothing.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::config::Config;
use crate::consent::event::{
    ALL_PURPOSES, ConsentEvent, EventKind, ImportDefaults, format_rfc3339_ms, now_ms,
    parse_rfc3339_ms,
};
use crate::consent::open::{Use, open_records};
use crate::consent::requests::ConsentRecords;

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
    /// Print SUBJECT's current state: per purpose, the latest event and what it means now.
    State {
        /// The data subject's id.
        subject: String,
    },
    /// Print every event of SUBJECT, oldest first.
    History {
        /// The data subject's id.
        subject: String,
    },
    /// Print everything held about SUBJECT as JSON (a data subject access request).
    Export {
        /// The data subject's id.
        subject: String,
    },
    /// Print the whole record of consent, in the order it was recorded (it imports back
    /// unchanged).
    ExportAll {
        /// The output format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ImportFormat,
    },
    /// Erase SUBJECT's consent history; a pseudonymised record of the erasure stays.
    Erase {
        /// The data subject's id.
        subject: String,
        /// A reference to the data subject request (ticket id, ...).
        #[arg(long = "ref")]
        request_ref: Option<String>,
    },
}

/// Import file formats (the same as the admin API's).
pub use crate::consent::requests::Format as ImportFormat;

/// Runs one consent subcommand against the store the configuration names (by default the
/// embedded `DATA_DIR/consent.db`), through the same code as the admin API.
pub async fn run(config: &Config, cmd: ConsentCommand) -> anyhow::Result<()> {
    let (service, records) = open_records(config, Use::OneShot)
        .await
        .context("cannot open the consent store")?;
    let result = execute(&records, cmd).await;
    service.store().close().await;
    result
}

/// The actor recorded for commands run from this shell: `cli:<user>`.
fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("cli:{user}")
}

async fn execute(records: &ConsentRecords, cmd: ConsentCommand) -> anyhow::Result<()> {
    let at_ms = now_ms();
    let actor = cli_actor();
    let one = |subject: String, purpose: String, kind, source: String, proof| ConsentEvent {
        subject,
        purpose,
        kind,
        at_ms,
        expires_at_ms: None,
        source: Some(source),
        proof,
        actor: None,
        recorded_at_ms: None,
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
        } => return import(records, &file, format, &source, &actor).await,
        ConsentCommand::State { subject } => return state(records, &subject).await,
        ConsentCommand::History { subject } => return history(records, &subject).await,
        ConsentCommand::Export { subject } => return export_subject(records, &subject).await,
        ConsentCommand::ExportAll { format } => return export_all(records, format).await,
        ConsentCommand::Erase {
            subject,
            request_ref,
        } => {
            let done = records
                .erase(&subject, &actor, request_ref.as_deref())
                .await?;
            println!(
                "erased: {} events removed; erasure recorded as {} at {}",
                done.events_removed,
                done.subject_pseudonym,
                format_rfc3339_ms(done.at_ms)
            );
            return Ok(());
        }
    };
    let (kind, purpose) = (event.kind, event.purpose.clone());
    records.record(vec![event], &actor).await?;
    println!("recorded: {kind} {purpose} {}", format_rfc3339_ms(at_ms));
    Ok(())
}

async fn import(
    records: &ConsentRecords,
    file: &Path,
    format: Option<ImportFormat>,
    source: &str,
    actor: &str,
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
    let defaults = ImportDefaults {
        source: Some(source),
        actor: Some(actor),
    };
    let n = records
        .import(&text, format, &defaults)
        .await
        .with_context(|| file.display().to_string())?;
    println!("imported {n} events");
    Ok(())
}

async fn export_subject(records: &ConsentRecords, subject: &str) -> anyhow::Result<()> {
    let export = records.export_subject(subject).await?;
    // The same document as the admin API's `GET /v1/subjects/{id}/export`.
    let json = crate::admin::model::SubjectExportView::from(&export);
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

async fn state(records: &ConsentRecords, subject: &str) -> anyhow::Result<()> {
    let purposes = records.state(subject, now_ms()).await?;
    if purposes.is_empty() {
        println!("no events");
    }
    for p in purposes {
        let e = &p.latest;
        let mut line = format!(
            "{:<20}  {:<9}  since {}",
            e.purpose,
            p.status.as_str(),
            format_rfc3339_ms(e.at_ms)
        );
        if let Some(x) = e.expires_at_ms {
            line.push_str(&format!("  expires={}", format_rfc3339_ms(x)));
        }
        if let Some(s) = &e.source {
            line.push_str(&format!("  source={s}"));
        }
        println!("{line}");
    }
    Ok(())
}

async fn export_all(records: &ConsentRecords, format: ImportFormat) -> anyhow::Result<()> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    out.write_all(format.header().as_bytes())?;
    let mut after = 0;
    loop {
        let page = records
            .export_page(after, crate::consent::requests::EXPORT_PAGE)
            .await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.seq;
        for e in &page {
            out.write_all(format.line(&e.event).as_bytes())?;
        }
    }
    out.flush()?;
    Ok(())
}

async fn history(records: &ConsentRecords, subject: &str) -> anyhow::Result<()> {
    let events = records.history(subject).await?;
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
        if let Some(a) = &e.actor {
            line.push_str(&format!("  actor={a}"));
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
