//! source → decode → embed → (Milvus, catalog).
//!
//! Stages run concurrently: decode workers (plain threads: decoding is CPU work) read, hash,
//! check and preprocess files and hand them over a bounded channel, so memory stays flat however
//! large the folder is, while this task batches them through the model; a second stage writes
//! each embedded batch to Milvus and the catalog while the model works on the next one.
//!
//! Write order, chosen so that a run killed at any point can simply be run again:
//! 1. catalog: reserve the image's id, status `pending` (an existing URI keeps its id);
//! 2. Milvus: upsert the vector under that id (a retry replaces rather than duplicates);
//! 3. catalog: mark `indexed`.
//!
//! A rerun skips images whose URI and content hash are already `indexed` (or `failed`, since the
//! same bytes fail the same way) and redoes `pending` ones.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::catalog::{Catalog, CatalogError, ImageStatus, KnownImage, NewImage};
use crate::embed::preprocess::{self, DecodeLimits, PreparedImage};
use crate::embed::{EmbedError, EmbeddingModel};
use crate::progress::Progress;
use crate::source::{self, Shard, SourceError, SourceImage};
use crate::store::{IndexSpec, MAX_URI_LENGTH, MilvusStore, StoreError, VectorRow};

/// Files larger than this are recorded as failed without being read whole.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error("{0}")]
    InvalidCollection(String),
    #[error("an ingest worker stopped unexpectedly: {0}")]
    Worker(String),
}

/// Everything ingest writes to, shared by the CLI, the standalone mode and the search server.
#[derive(Clone, Debug)]
pub struct Ingestor {
    pub store: MilvusStore,
    pub catalog: Catalog,
    pub model: Arc<EmbeddingModel>,
    pub index: IndexSpec,
    pub limits: DecodeLimits,
}

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub collection: String,
    /// Images per inference call and per Milvus/catalog write.
    pub batch_size: usize,
    /// Threads reading and decoding files while the model runs.
    pub decode_workers: usize,
    /// The part of the source this run covers (an Indexed Job pod's share).
    pub shard: Shard,
    /// Remove images that are gone from the source (within the folder and this shard).
    pub prune: bool,
}

impl IngestOptions {
    /// The whole source, no pruning.
    pub fn new(collection: &str, batch_size: usize, decode_workers: usize) -> Self {
        Self { collection: collection.to_string(), batch_size, decode_workers, shard: Shard::WHOLE, prune: false }
    }
}

/// What a run did, printed at the end and returned as JSON with `--json`; in a cluster it is
/// also the ingest pod's termination message, which the controller reads back into status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct IngestReport {
    pub collection: String,
    /// Image files the source listed.
    pub discovered: u64,
    /// Embedded and written in this run.
    pub indexed: u64,
    /// Unchanged since an earlier run (same URI and content hash), so not embedded again.
    pub skipped: u64,
    /// Could not be indexed; each is in `failures` with the reason, and in the catalog.
    pub failed: u64,
    /// Gone from the source, so removed from Milvus and the catalog (`--prune`).
    pub pruned: u64,
    pub failures: Vec<IngestFailure>,
    pub seconds: f64,
    pub images_per_second: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct IngestFailure {
    pub uri: String,
    pub reason: String,
}

impl IngestReport {
    /// Compact JSON of at most `limit` bytes: failure details are dropped (halving) until it
    /// fits, while the counts stay exact. Kubernetes keeps 4 KiB of a termination message.
    pub fn to_json_within(&self, limit: usize) -> String {
        let mut report = self.clone();
        loop {
            let text = serde_json::to_string(&report).unwrap_or_else(|_| "{}".into());
            if text.len() <= limit || report.failures.is_empty() {
                return text;
            }
            report.failures.truncate(report.failures.len() / 2);
        }
    }

    pub fn summary(&self) -> String {
        let mut text = format!(
            "collection {}: {} images found, {} indexed, {} unchanged (skipped), {} failed{} in {:.1} s ({:.1} images/s)",
            self.collection,
            self.discovered,
            self.indexed,
            self.skipped,
            self.failed,
            if self.pruned > 0 { format!(", {} gone from the source removed", self.pruned) } else { String::new() },
            self.seconds,
            self.images_per_second
        );
        if self.indexed == 0 && self.failed == 0 && self.skipped > 0 {
            text.push_str("; nothing new to add");
        }
        for failure in &self.failures {
            text.push_str(&format!("\n  failed: {}: {}", failure.uri, failure.reason));
        }
        text
    }
}

/// What a decode worker found out about one file.
enum Examined {
    Unchanged,
    Failed { uri: String, content_hash: Option<String>, size_bytes: Option<i64>, reason: String },
    Ready { image: NewImage, prepared: PreparedImage },
}

impl Ingestor {
    pub async fn ingest_directory(
        &self,
        root: &Path,
        options: &IngestOptions,
        progress: &Progress,
    ) -> Result<IngestReport, IngestError> {
        let started = Instant::now();
        let collection = options.collection.as_str();
        crate::store::validate_collection_name(collection).map_err(IngestError::InvalidCollection)?;
        self.store.ensure_collection(collection, self.model.dimension(), &self.index).await?;

        let folder = root.to_path_buf();
        let mut files = tokio::task::spawn_blocking(move || source::list_directory(&folder))
            .await
            .map_err(|e| IngestError::Worker(e.to_string()))??;
        files.retain(|file| options.shard.contains(&file.uri));
        let listed: std::collections::HashSet<String> =
            if options.prune { files.iter().map(|f| f.uri.clone()).collect() } else { Default::default() };
        let known = self.catalog.known_images(collection).await?;
        let mut report =
            IngestReport { collection: collection.to_string(), discovered: files.len() as u64, ..Default::default() };
        // Logged before the bar appears, so the line does not strand a half-drawn bar above it.
        tracing::info!(
            collection,
            images = files.len(),
            shard = options.shard.index,
            shards = options.shard.count,
            "ingest started"
        );
        progress.begin(files.len() as u64);

        let (sender, mut receiver) = mpsc::channel::<Examined>(options.batch_size.max(1) * 2);
        let workers =
            spawn_decoders(files, known.clone(), sender, self.limits, self.model.input_size(), options.decode_workers);

        // Two stages overlap: while Milvus and the catalog take one batch, the model embeds the
        // next (a channel of one batch between them), so inference never waits on a write.
        let (to_writer, embedded) = mpsc::channel::<(Vec<NewImage>, Vec<Vec<f32>>)>(1);
        let embedding = async {
            // Owned by this stage: dropped when it ends, however it ends, which lets the writer
            // finish what it has and stop.
            let to_writer = to_writer;
            let mut batch: Vec<(NewImage, PreparedImage)> = Vec::with_capacity(options.batch_size);
            while let Some(examined) = receiver.recv().await {
                match examined {
                    Examined::Unchanged => {
                        report.skipped += 1;
                        progress.advance(1);
                    }
                    Examined::Failed { uri, content_hash, size_bytes, reason } => {
                        self.record_failure(collection, &known, &uri, content_hash.as_deref(), size_bytes, &reason)
                            .await?;
                        tracing::warn!(collection, uri, reason, "image failed");
                        report.failed += 1;
                        report.failures.push(IngestFailure { uri, reason });
                        progress.advance(1);
                    }
                    Examined::Ready { image, prepared } => {
                        batch.push((image, prepared));
                        if batch.len() >= options.batch_size.max(1)
                            && to_writer.send(self.embed(std::mem::take(&mut batch)).await?).await.is_err()
                        {
                            return Ok(()); // the writer stopped on an error; it reports it
                        }
                    }
                }
            }
            if !batch.is_empty() {
                let _ = to_writer.send(self.embed(std::mem::take(&mut batch)).await?).await;
            }
            Ok::<(), IngestError>(())
        };
        let writing = async {
            // Owned here too: a writer that fails drops its receiver, so the embedding stage's
            // next send fails and it stops, instead of waiting forever on a full channel.
            let mut embedded = embedded;
            let mut written = 0u64;
            while let Some((images, vectors)) = embedded.recv().await {
                let count = self.write_embedded(collection, images, vectors).await?.len() as u64;
                written += count;
                progress.advance(count);
            }
            Ok::<u64, IngestError>(written)
        };
        let (embedding, writing) = tokio::join!(embedding, writing);
        let result = match (writing, embedding) {
            (Err(error), _) | (Ok(_), Err(error)) => Err(error),
            (Ok(written), Ok(())) => {
                report.indexed += written;
                Ok(())
            }
        };
        // On error the receiver is dropped here, which stops the workers at their next send.
        drop(receiver);
        for worker in workers {
            if worker.join().is_err() {
                return Err(IngestError::Worker("a decode thread panicked".into()));
            }
        }
        progress.finish();
        result?;
        if options.prune {
            report.pruned = self.prune(collection, root, options.shard, &known, &listed).await?;
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

    /// Removes catalogued images under `root` and in `shard` that the listing no longer has:
    /// Milvus first, then the catalog, so a kill in between leaves rows the next prune finds
    /// again (deleting an absent vector is a no-op). Images of other folders, uploads and other
    /// shards are never touched.
    async fn prune(
        &self,
        collection: &str,
        root: &Path,
        shard: Shard,
        known: &HashMap<String, KnownImage>,
        listed: &std::collections::HashSet<String>,
    ) -> Result<u64, IngestError> {
        let root =
            root.canonicalize().map_err(|source| SourceError::Unreadable { path: root.to_path_buf(), source })?;
        let prefix = format!("{}/", root.display());
        let gone: Vec<i64> = known
            .iter()
            .filter(|(uri, _)| uri.starts_with(&prefix) && shard.contains(uri) && !listed.contains(*uri))
            .map(|(_, image)| image.id)
            .collect();
        if gone.is_empty() {
            return Ok(0);
        }
        for chunk in gone.chunks(1000) {
            self.store.delete(collection, chunk).await?;
            self.catalog.delete_images(chunk).await?;
        }
        tracing::info!(collection, pruned = gone.len(), "removed images that are gone from the folder");
        Ok(gone.len() as u64)
    }

    /// Adds one already decoded image (an upload). Returns its catalog id; an identical image
    /// already indexed under the same URI is not embedded again.
    pub async fn add_prepared(
        &self,
        collection: &str,
        image: NewImage,
        prepared: PreparedImage,
    ) -> Result<i64, IngestError> {
        crate::store::validate_collection_name(collection).map_err(IngestError::InvalidCollection)?;
        self.store.ensure_collection(collection, self.model.dimension(), &self.index).await?;
        if let Some(existing) = self.catalog.find(collection, &image.uri).await?
            && existing.status == ImageStatus::Indexed
            && existing.content_hash.as_deref() == Some(image.content_hash.as_str())
        {
            return Ok(existing.id);
        }
        let ids = self.write_batch_ids(collection, vec![(image, prepared)]).await?;
        ids.first().copied().ok_or_else(|| IngestError::Worker("no id returned for the image".into()))
    }

    /// Runs the model over a batch (on the blocking pool: inference is CPU work).
    async fn embed(
        &self,
        batch: Vec<(NewImage, PreparedImage)>,
    ) -> Result<(Vec<NewImage>, Vec<Vec<f32>>), IngestError> {
        let (images, prepared): (Vec<NewImage>, Vec<PreparedImage>) = batch.into_iter().unzip();
        let model = Arc::clone(&self.model);
        let vectors = tokio::task::spawn_blocking(move || model.embed_batch(&prepared))
            .await
            .map_err(|e| IngestError::Worker(e.to_string()))??;
        Ok((images, vectors))
    }

    async fn write_batch_ids(
        &self,
        collection: &str,
        batch: Vec<(NewImage, PreparedImage)>,
    ) -> Result<Vec<i64>, IngestError> {
        let (images, vectors) = self.embed(batch).await?;
        self.write_embedded(collection, images, vectors).await
    }

    /// The write order that makes a kill at any point safe (see the module docs).
    async fn write_embedded(
        &self,
        collection: &str,
        images: Vec<NewImage>,
        vectors: Vec<Vec<f32>>,
    ) -> Result<Vec<i64>, IngestError> {
        let ids = self.catalog.reserve(collection, &images).await?;
        let rows: Vec<VectorRow> = images
            .into_iter()
            .zip(vectors)
            .zip(&ids)
            .map(|((image, vector), &id)| VectorRow { id, vector, uri: image.uri, content_hash: image.content_hash })
            .collect();
        self.store.upsert(collection, &rows).await?;
        self.catalog.mark_indexed(&ids).await?;
        Ok(ids)
    }

    async fn record_failure(
        &self,
        collection: &str,
        known: &HashMap<String, KnownImage>,
        uri: &str,
        content_hash: Option<&str>,
        size_bytes: Option<i64>,
        reason: &str,
    ) -> Result<(), IngestError> {
        let id = self.catalog.record_failure(collection, uri, content_hash, size_bytes, reason).await?;
        // An image that was searchable and is now broken must stop matching searches.
        if known.get(uri).is_some_and(|k| k.status != ImageStatus::Failed) {
            self.store.delete(collection, &[id]).await?;
        }
        Ok(())
    }
}

fn spawn_decoders(
    files: Vec<SourceImage>,
    known: HashMap<String, KnownImage>,
    sender: mpsc::Sender<Examined>,
    limits: DecodeLimits,
    input_size: u32,
    workers: usize,
) -> Vec<std::thread::JoinHandle<()>> {
    let files = Arc::new(files);
    let known = Arc::new(known);
    let next = Arc::new(AtomicUsize::new(0));
    (0..workers.max(1))
        .map(|n| {
            let (files, known, next, sender) =
                (Arc::clone(&files), Arc::clone(&known), Arc::clone(&next), sender.clone());
            std::thread::Builder::new()
                .name(format!("decode-{n}"))
                .spawn(move || {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(file) = files.get(index) else { break };
                        let examined = examine(file, known.get(&file.uri), limits, input_size);
                        if sender.blocking_send(examined).is_err() {
                            break; // the writer stopped (error or shutdown)
                        }
                    }
                })
                .expect("spawning a decode thread")
        })
        .collect()
}

fn examine(file: &SourceImage, known: Option<&KnownImage>, limits: DecodeLimits, input_size: u32) -> Examined {
    let failed = |content_hash: Option<String>, size_bytes: Option<i64>, reason: String| Examined::Failed {
        uri: file.uri.clone(),
        content_hash,
        size_bytes,
        reason,
    };
    if file.uri.len() > MAX_URI_LENGTH as usize {
        return failed(
            None,
            None,
            format!("path is {} bytes long, over the limit of {MAX_URI_LENGTH}", file.uri.len()),
        );
    }
    let size = match std::fs::metadata(&file.path) {
        Ok(meta) => meta.len(),
        Err(e) => return failed(None, None, format!("cannot read file: {e}")),
    };
    if size > MAX_FILE_BYTES {
        return failed(None, Some(size as i64), format!("file is {size} bytes, over the limit of {MAX_FILE_BYTES}"));
    }
    let bytes = match std::fs::read(&file.path) {
        Ok(bytes) => bytes,
        Err(e) => return failed(None, Some(size as i64), format!("cannot read file: {e}")),
    };
    let content_hash = hex::encode(Sha256::digest(&bytes));
    if let Some(known) = known
        && known.content_hash.as_deref() == Some(content_hash.as_str())
        && matches!(known.status, ImageStatus::Indexed | ImageStatus::Failed)
    {
        return Examined::Unchanged;
    }
    match preprocess::prepare(&bytes, limits, input_size) {
        Ok(prepared) => Examined::Ready {
            image: NewImage {
                uri: file.uri.clone(),
                content_hash,
                size_bytes: bytes.len() as i64,
                width: i64::from(prepared.width),
                height: i64::from(prepared.height),
            },
            prepared,
        },
        Err(e) => failed(Some(content_hash), Some(bytes.len() as i64), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_termination_summary_fits_in_four_kib_with_exact_counts() {
        let failures: Vec<IngestFailure> = (0..500)
            .map(|i| IngestFailure { uri: format!("/images/broken/{i:04}.jpg"), reason: "truncated JPEG data".into() })
            .collect();
        let report = IngestReport {
            collection: "shop_products".into(),
            discovered: 10_500,
            indexed: 10_000,
            failed: 500,
            failures,
            seconds: 120.5,
            images_per_second: 83.0,
            ..IngestReport::default()
        };
        let text = report.to_json_within(4096);
        assert!(text.len() <= 4096, "{} bytes", text.len());
        let back: IngestReport = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!((back.discovered, back.indexed, back.failed), (10_500, 10_000, 500), "counts stay exact");
        assert!(!back.failures.is_empty() && back.failures.len() < 500, "some reasons kept, the rest dropped");
        assert_eq!(back.failures[0], report.failures[0]);
    }
}
