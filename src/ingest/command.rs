//! `imgsearch ingest`: opens the source and the image index, runs one ingest with a progress
//! display until it ends or a stop is requested, and reports it (stdout, and the summary file an
//! ingest Job's pod leaves for the controller).

use std::path::PathBuf;

use anyhow::Context;

use super::{IngestOptions, IngestReport};
use crate::embed::{ModelSettings, Workload};
use crate::index::{BackendConfig, ImageIndex};
use crate::progress::Progress;
use crate::shutdown::Shutdown;
use crate::source::{Source, SourceSpec};
use crate::store::IndexSpec;

/// What Kubernetes keeps of a container's termination message.
const TERMINATION_MESSAGE_LIMIT: usize = 4096;

/// Everything one `imgsearch ingest` run needs.
#[derive(Debug, Clone)]
pub struct IngestCommand {
    pub source: SourceSpec,
    pub backend: BackendConfig,
    pub model: ModelSettings,
    pub index: IndexSpec,
    pub options: IngestOptions,
    /// Print the report as JSON instead of a summary line.
    pub json: bool,
    /// Also write the report as compact JSON (≤ 4 KiB) here.
    pub summary_file: Option<PathBuf>,
}

pub async fn run(command: IngestCommand, shutdown: Shutdown) -> anyhow::Result<()> {
    let source = command.source.open()?;
    let collection = &command.options.collection;
    let index =
        ImageIndex::open(&command.backend, collection, &command.model, Workload::Throughput, command.index).await?;
    let Some(report) = ingest_until_stopped(&index, &source, &command.options, &shutdown).await? else {
        anyhow::bail!("interrupted; what was written is kept and a rerun continues where this one stopped");
    };
    if let Some(path) = &command.summary_file {
        std::fs::write(path, report.to_json_within(TERMINATION_MESSAGE_LIMIT))
            .with_context(|| format!("cannot write the summary to {}", path.display()))?;
    }
    if command.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.summary());
    }
    Ok(())
}

/// Ingests with a progress display; `None` when a stop was requested first. Stopping midway is
/// safe: the write order lets a rerun finish the job (see [`crate::index`]).
pub async fn ingest_until_stopped(
    index: &ImageIndex,
    source: &Source,
    options: &IngestOptions,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<IngestReport>> {
    let progress = Progress::visible();
    tokio::select! {
        report = super::run(index, source, options, &progress) => Ok(Some(report?)),
        () = shutdown.requested() => {
            progress.finish();
            Ok(None)
        }
    }
}
