//! Ingest: a source (a folder, a bucket, a URL list) brought into a collection. This module
//! holds the options, the entry point ([`run`], writing through an [`ImageIndex`]) and the
//! pruning of what the source no longer has;
//! `pipeline` the stages an image goes through; [`report`] what a run tells; [`command`] the
//! `imgsearch ingest` command around it. The writes and their order are the image index's
//! ([`crate::index`]), shared with the search service's uploads.
//!
//! A rerun skips images whose URI and content hash are already `indexed` (or `failed`, since the
//! same bytes fail the same way) and redoes `pending` ones, so a run killed at any point can
//! simply be run again. Without a SQL catalog a rerun reads what is indexed back from Milvus.

pub mod command;
mod pipeline;
pub mod report;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::catalog::{CatalogError, KnownImage};
use crate::embed::EmbedError;
use crate::index::{ImageIndex, IndexError};
use crate::progress::Progress;
use crate::source::{Shard, Source, SourceError};
use crate::store::{CollectionOwner, StoreError};

pub use report::{IngestFailure, IngestReport};

/// The exit code of an ingest that cannot succeed as configured (sysexits' `EX_CONFIG`): the
/// ingest Job's pod failure policy fails that shard at once instead of retrying it, since a
/// retry meets the same spec. Any other failure (Milvus, the catalog or the source unreachable)
/// exits 1 and is retried.
pub const EXIT_MISCONFIGURED: u8 = 78;

/// Marks an error as the configuration's (its arguments or environment are invalid).
#[derive(Debug, Clone, Copy)]
pub struct Misconfigured;

impl std::fmt::Display for Misconfigured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid configuration (not retried)")
    }
}

/// Whether `error` means the run cannot succeed as configured: invalid arguments, a source path
/// that is not a folder or a source spec that cannot work, a Milvus collection of another
/// dimension. A folder that cannot be read (not there yet, a volume not mounted) is not: it may
/// be there on the next try.
pub fn misconfigured(error: &anyhow::Error) -> bool {
    let source = |e: &SourceError| matches!(e, SourceError::NotADirectory(_) | SourceError::InvalidSpec(_));
    // Another object's collection, or one of another dimension, stays so however often it is tried.
    let store = |e: &StoreError| matches!(e, StoreError::DimensionMismatch { .. } | StoreError::OwnedElsewhere { .. });
    let index = |e: &IndexError| match e {
        IndexError::InvalidCollection(_) => true,
        IndexError::Store(inner) => store(inner),
        _ => false,
    };
    let ingest = |e: &IngestError| match e {
        IngestError::Source(inner) => source(inner),
        IngestError::Index(inner) => index(inner),
    };
    // `Misconfigured` is attached as context, which `anyhow` finds on the error itself.
    error.downcast_ref::<Misconfigured>().is_some()
        || error.chain().any(|cause| {
            cause.downcast_ref::<SourceError>().is_some_and(source)
                || cause.downcast_ref::<IngestError>().is_some_and(ingest)
                || cause.downcast_ref::<StoreError>().is_some_and(store)
                || cause.downcast_ref::<IndexError>().is_some_and(index)
        })
}

/// Why an ingest stopped: its source, or the index it writes to.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Index(#[from] IndexError),
}

// The index's parts fail as the index: one route from each to whoever maps ingest errors.
impl From<StoreError> for IngestError {
    fn from(error: StoreError) -> Self {
        Self::Index(error.into())
    }
}

impl From<CatalogError> for IngestError {
    fn from(error: CatalogError) -> Self {
        Self::Index(error.into())
    }
}

impl From<EmbedError> for IngestError {
    fn from(error: EmbedError) -> Self {
        Self::Index(error.into())
    }
}

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub collection: String,
    /// Images per inference call and per Milvus/catalog write.
    pub batch_size: usize,
    /// Images decoded at once while the model runs.
    pub decode_workers: usize,
    /// The part of the source this run covers (an Indexed Job pod's share).
    pub shard: Shard,
    /// Remove images that are gone from the source (only its own images, and only this shard's).
    pub prune: bool,
    /// The ImageCollection this run works for (an ingest Job's): the collection must be its
    /// (or nobody's yet, and is then claimed for it) before anything is written or pruned.
    pub owner: Option<CollectionOwner>,
}

impl IngestOptions {
    /// The whole source, no pruning, no owner.
    pub fn new(collection: &str, batch_size: usize, decode_workers: usize) -> Self {
        Self {
            collection: collection.to_string(),
            batch_size,
            decode_workers,
            shard: Shard::WHOLE,
            prune: false,
            owner: None,
        }
    }
}

/// Ingests a folder (see [`run`]).
pub async fn run_directory(
    index: &ImageIndex,
    root: &Path,
    options: &IngestOptions,
    progress: &Progress,
) -> Result<IngestReport, IngestError> {
    run(index, &Source::directory(root)?, options, progress).await
}

/// Lists the source (this run's shard of it) and brings the collection and the catalog up to
/// date with it through `index`: the pipeline's stages run at once, then, with `prune`,
/// what the source no longer lists is removed.
pub async fn run(
    index: &ImageIndex,
    source: &Source,
    options: &IngestOptions,
    progress: &Progress,
) -> Result<IngestReport, IngestError> {
    let started = Instant::now();
    let collection = options.collection.as_str();
    index.ensure_collection(collection, options.owner.as_ref()).await?;

    let mut files = source.list().await?;
    files.retain(|file| options.shard.contains(&file.uri));
    let listed: HashSet<String> =
        if options.prune { files.iter().map(|f| f.uri.clone()).collect() } else { Default::default() };
    let known = Arc::new(index.catalog().known_images(collection).await?);
    let mut report =
        IngestReport { collection: collection.to_string(), discovered: files.len() as u64, ..Default::default() };
    // Logged before the bar appears, so the line does not strand a half-drawn bar above it.
    tracing::info!(
        collection,
        source = source.describe(),
        images = files.len(),
        shard = options.shard.index,
        shards = options.shard.count,
        "ingest started"
    );
    progress.begin(files.len() as u64);

    let decode_workers = options.decode_workers.max(1);
    let (to_decoders, fetched) = mpsc::channel(decode_workers * 2);
    let (to_triage, decoded) = mpsc::channel(options.batch_size.max(1) * 2);
    // Triage, embedding and writing overlap: the model embeds up to one batch per session
    // at once while Milvus and the catalog take the batch before, so inference never waits
    // on a write.
    let (to_model, batches) = mpsc::channel(1);
    let (to_writer, embedded) = mpsc::channel(1);
    let triage = pipeline::Triage { index, collection, batch_size: options.batch_size, known: &known, progress };
    let (reading, (), triaging, embedding, writing) = tokio::join!(
        pipeline::read(source, files, to_decoders),
        pipeline::decode(fetched, Arc::clone(&known), index.limits(), index.model().input(), decode_workers, to_triage),
        pipeline::triage(triage, decoded, to_model, &mut report),
        pipeline::embed(index, batches, to_writer),
        pipeline::write(index, collection, embedded, progress),
    );
    progress.finish();
    // The first stage to fail is the one to blame: a write error stops embedding, which
    // stops reading, not the other way round.
    report.indexed += writing?;
    embedding?;
    triaging?;
    reading?;
    if options.prune {
        report.pruned = prune(index, collection, source, options.shard, &known, &listed).await?;
    }
    if report.indexed > 0 || report.pruned > 0 {
        // Sealed segments get indexed; left growing, every search scans them in full.
        index.flush(collection).await?;
    }

    report.seconds = started.elapsed().as_secs_f64();
    report.images_per_second = (report.indexed as f64) / report.seconds.max(1e-9);
    tracing::info!(
        collection,
        discovered = report.discovered,
        indexed = report.indexed,
        skipped = report.skipped,
        failed = report.failed,
        pruned = report.pruned,
        seconds = format!("{:.1}", report.seconds),
        "ingest finished"
    );
    Ok(report)
}

/// Removes catalogued images of this source and shard that the listing no longer has, in
/// the index's delete order (a kill in between leaves rows the next prune finds again).
/// Images of other sources, uploads and other shards are never touched.
async fn prune(
    index: &ImageIndex,
    collection: &str,
    source: &Source,
    shard: Shard,
    known: &HashMap<String, KnownImage>,
    listed: &HashSet<String>,
) -> Result<u64, IngestError> {
    let gone: Vec<i64> = known
        .iter()
        .filter(|(uri, _)| source.owns(uri) && shard.contains(uri) && !listed.contains(*uri))
        .map(|(_, image)| image.id)
        .collect();
    if gone.is_empty() {
        return Ok(0);
    }
    // A source that lists nothing at all is far more often misconfigured (a wrong prefix, an
    // empty mount) than emptied on purpose; emptying the collection then would be the wrong
    // guess, and an expensive one.
    if listed.is_empty() {
        tracing::warn!(
            collection,
            source = source.describe(),
            catalogued = gone.len(),
            "the source listed no images; not pruning (delete the images explicitly if that is intended)"
        );
        return Ok(0);
    }
    index.delete(collection, &gone).await?;
    tracing::info!(collection, pruned = gone.len(), "removed images that are gone from the source");
    Ok(gone.len() as u64)
}

#[cfg(test)]
mod exit_code_tests {
    use super::*;

    #[test]
    fn a_configuration_that_cannot_work_is_told_apart_from_a_source_or_server_away() {
        let not_a_folder = anyhow::Error::from(IngestError::Source(SourceError::NotADirectory("/photos/a.jpg".into())));
        assert!(misconfigured(&not_a_folder));
        assert!(misconfigured(&anyhow::Error::from(SourceError::InvalidSpec("no bucket".into()))));
        assert!(misconfigured(&anyhow::Error::from(IndexError::InvalidCollection("dimension 8, not 1280".into()))));
        assert!(misconfigured(&anyhow::anyhow!("IMGSEARCH_CATALOG_URL: unknown scheme").context(Misconfigured)));
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let unreadable = SourceError::Unreadable { path: "/photos".into(), source: missing };
        assert!(
            !misconfigured(&anyhow::Error::from(IngestError::Source(unreadable))),
            "a volume may be there next try"
        );
        assert!(!misconfigured(&anyhow::anyhow!("Milvus at http://milvus:19530 did not answer")));
        let taken = StoreError::OwnedElsewhere { collection: "photos".into(), owner: "shop/photos".into() };
        assert!(misconfigured(&anyhow::Error::from(IngestError::from(taken))), "another object's collection");
        let other_dimension = StoreError::DimensionMismatch { collection: "photos".into(), found: 8, expected: 1280 };
        assert!(misconfigured(&anyhow::Error::from(IngestError::from(other_dimension))));
        let away = StoreError::Connect { uri: "http://milvus:19530".into(), detail: "refused".into() };
        assert!(!misconfigured(&anyhow::Error::from(IngestError::from(away))), "Milvus may be back next try");
    }
}
