//! source → read → decode → embed → (Milvus, catalog).
//!
//! Stages run concurrently over bounded channels, so memory stays flat however large the source
//! is: reads (several in flight, for network sources), decode workers (plain threads: decoding
//! is CPU work) that hash, check and preprocess, the model batching what they produce, and a
//! writer taking each embedded batch to Milvus and the catalog while the model works on the next.
//!
//! Write order, chosen so that a run killed at any point can simply be run again:
//! 1. catalog: reserve the image's id, status `pending` (an existing URI keeps its id);
//! 2. Milvus: upsert the vector under that id (a retry replaces rather than duplicates);
//! 3. catalog: mark `indexed`.
//!
//! A rerun skips images whose URI and content hash are already `indexed` (or `failed`, since the
//! same bytes fail the same way) and redoes `pending` ones.
//!
//! Without a SQL catalog (`DATABASE_URL=none`) steps 1 and 3 fall away: the id derives from the
//! URI ([`crate::catalog::uri_id`]), the Milvus upsert is the record, and a rerun reads what is
//! indexed back from Milvus. An image whose derived id another URI already holds is refused
//! (reported as failed) rather than allowed to overwrite that image.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::catalog::{Catalog, CatalogError, ImageStatus, KnownImage, NewImage};
use crate::embed::preprocess::{self, DecodeLimits, ModelInput, PreparedImage};
use crate::embed::{EmbedError, EmbeddingModel};
use crate::progress::Progress;
use crate::source::{ReadError, Shard, Source, SourceError, SourceImage};
use crate::store::{IndexSpec, MAX_URI_LENGTH, MilvusStore, StoreError, VectorRow};

pub use crate::source::MAX_FILE_BYTES;

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
    /// Remove images that are gone from the source (only its own images, and only this shard's).
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

/// One image as the reading stage hands it to the decoders.
struct Fetched {
    image: SourceImage,
    bytes: Result<Vec<u8>, ReadError>,
}

/// What a decode worker found out about one image.
enum Examined {
    Unchanged,
    Failed {
        uri: String,
        content_hash: Option<String>,
        size_bytes: Option<i64>,
        reason: String,
        /// Only unavailable for now (a timeout, a server error): an indexed copy stays indexed.
        transient: bool,
    },
    Ready {
        image: NewImage,
        prepared: PreparedImage,
    },
}

impl Ingestor {
    /// Ingests a folder (see [`Ingestor::ingest`]).
    pub async fn ingest_directory(
        &self,
        root: &Path,
        options: &IngestOptions,
        progress: &Progress,
    ) -> Result<IngestReport, IngestError> {
        self.ingest(&Source::directory(root)?, options, progress).await
    }

    /// Lists the source (this run's shard of it) and brings the collection and the catalog up
    /// to date with it.
    ///
    /// Five stages run at once, joined by bounded channels: reading (several reads in flight),
    /// decoding (plain threads: CPU work), batching (and recording failures), embedding (one
    /// batch per model session at a time) and writing (Milvus, then the catalog). Each stage
    /// owns its ends of the channels, so when one stops, on success or on an error, its
    /// neighbours see a closed channel and stop too; nothing waits forever on a stage that is gone.
    pub async fn ingest(
        &self,
        source: &Source,
        options: &IngestOptions,
        progress: &Progress,
    ) -> Result<IngestReport, IngestError> {
        let started = Instant::now();
        let collection = options.collection.as_str();
        crate::store::validate_collection_name(collection).map_err(IngestError::InvalidCollection)?;
        self.store.ensure_collection(collection, self.model.dimension(), &self.index).await?;

        let mut files = source.list().await?;
        files.retain(|file| options.shard.contains(&file.uri));
        let listed: HashSet<String> =
            if options.prune { files.iter().map(|f| f.uri.clone()).collect() } else { Default::default() };
        let known = self.catalog.known_images(collection).await?;
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
        let (to_decoders, fetched) = mpsc::channel::<Fetched>(decode_workers * 2);
        let reading = async {
            let to_decoders = to_decoders;
            let mut reads = futures::stream::iter(files)
                .map(|image| async move {
                    let bytes = source.read(&image).await;
                    Fetched { image, bytes }
                })
                // Unordered: one slow URL must not hold up the reads that finished behind it.
                .buffer_unordered(source.read_concurrency());
            while let Some(fetched) = reads.next().await {
                // The source itself is gone: stop reading; what is already read still gets
                // written, since the later stages drain their channels before they stop.
                if let Err(ReadError::Source(error)) = fetched.bytes {
                    return Err(IngestError::Source(error));
                }
                if to_decoders.send(fetched).await.is_err() {
                    break; // a later stage stopped; it reports why
                }
            }
            Ok::<(), IngestError>(())
        };

        let (to_embedder, decoded) = mpsc::channel::<Examined>(options.batch_size.max(1) * 2);
        let workers =
            spawn_decoders(fetched, known.clone(), to_embedder, self.limits, self.model.input(), decode_workers);

        // Batching, embedding and writing overlap: the model embeds up to one batch per session
        // at once (each on its own blocking thread) while Milvus and the catalog take the batch
        // before, so inference never waits on a write.
        let (to_model, batches) = mpsc::channel::<Vec<(NewImage, PreparedImage)>>(1);
        let (to_writer, embedded) = mpsc::channel::<(Vec<NewImage>, Vec<Vec<f32>>)>(1);
        // Without a SQL catalog ids derive from URIs: which URI holds each id, so that a second
        // URI with the same id is refused instead of overwriting the first one's vector.
        let mut holders: HashMap<i64, String> = if self.catalog.derives_ids() {
            known.iter().map(|(uri, image)| (image.id, uri.clone())).collect()
        } else {
            HashMap::new()
        };
        let batching = async {
            let (mut decoded, to_model) = (decoded, to_model);
            let mut batch: Vec<(NewImage, PreparedImage)> = Vec::with_capacity(options.batch_size);
            while let Some(examined) = decoded.recv().await {
                match examined {
                    Examined::Unchanged => {
                        report.skipped += 1;
                        progress.advance(1);
                    }
                    Examined::Failed { uri, content_hash, size_bytes, reason, transient } => {
                        let indexed = known.get(&uri).is_some_and(|k| k.status == ImageStatus::Indexed);
                        if !(transient && indexed) {
                            self.record_failure(collection, &known, &uri, content_hash.as_deref(), size_bytes, &reason)
                                .await?;
                        }
                        tracing::warn!(collection, uri, reason, "image failed");
                        report.failed += 1;
                        report.failures.push(IngestFailure { uri, reason });
                        progress.advance(1);
                    }
                    Examined::Ready { image, prepared } => {
                        if let Err(taken) = claim_id(&mut holders, &self.catalog, collection, &image.uri) {
                            // Not recorded as this image's failure: the id's row is the other image's.
                            let reason = taken.to_string();
                            tracing::warn!(collection, uri = image.uri, reason, "image failed");
                            report.failed += 1;
                            report.failures.push(IngestFailure { uri: image.uri, reason });
                            progress.advance(1);
                            continue;
                        }
                        batch.push((image, prepared));
                        if batch.len() >= options.batch_size.max(1)
                            && to_model.send(std::mem::take(&mut batch)).await.is_err()
                        {
                            return Ok(()); // a later stage stopped on an error; it reports it
                        }
                    }
                }
            }
            if !batch.is_empty() {
                let _ = to_model.send(batch).await;
            }
            Ok::<(), IngestError>(())
        };
        let embedding = async {
            let to_writer = to_writer;
            let mut batches = batches;
            let mut vectors = futures::stream::poll_fn(|cx| batches.poll_recv(cx))
                .map(|batch| self.embed(batch))
                .buffer_unordered(self.model.sessions());
            while let Some(embedded) = vectors.next().await {
                if to_writer.send(embedded?).await.is_err() {
                    break; // the writer stopped on an error; it reports it
                }
            }
            Ok::<(), IngestError>(())
        };
        let writing = async {
            let mut embedded = embedded;
            let mut written = 0u64;
            while let Some((images, vectors)) = embedded.recv().await {
                let count = self.write_embedded(collection, images, vectors).await?.len() as u64;
                written += count;
                progress.advance(count);
            }
            Ok::<u64, IngestError>(written)
        };
        let (reading, batching, embedding, writing) = tokio::join!(reading, batching, embedding, writing);
        // The decoders have stopped too: their input is closed or their output is gone.
        for worker in workers {
            if worker.join().is_err() {
                return Err(IngestError::Worker("a decode thread panicked".into()));
            }
        }
        progress.finish();
        // The first stage to fail is the one to blame: a write error stops embedding, which
        // stops reading, not the other way round.
        report.indexed += writing?;
        embedding?;
        batching?;
        reading?;
        if options.prune {
            report.pruned = self.prune(collection, source, options.shard, &known, &listed).await?;
        }
        if report.indexed > 0 || report.pruned > 0 {
            // Sealed segments get indexed; left growing, every search scans them in full.
            self.store.flush(collection).await?;
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

    /// Removes catalogued images of this source and shard that the listing no longer has:
    /// Milvus first, then the catalog, so a kill in between leaves rows the next prune finds
    /// again (deleting an absent vector is a no-op). Images of other sources, uploads and other
    /// shards are never touched.
    async fn prune(
        &self,
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
        for chunk in gone.chunks(1000) {
            self.store.delete(collection, chunk).await?;
            self.catalog.delete_images(chunk).await?;
        }
        tracing::info!(collection, pruned = gone.len(), "removed images that are gone from the source");
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
        self.catalog.check_id_free(collection, &image.uri).await?;
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

/// Claims the id `uri` derives to in `holders` (no SQL catalog); fails when another URI holds
/// it. With a SQL catalog ids come from the database and this always succeeds.
fn claim_id(
    holders: &mut HashMap<i64, String>,
    catalog: &Catalog,
    collection: &str,
    uri: &str,
) -> Result<(), CatalogError> {
    let Some(id) = catalog.derived_id(collection, uri) else { return Ok(()) };
    match holders.get(&id) {
        Some(holder) if holder != uri => {
            Err(CatalogError::IdTaken { id, uri: uri.to_string(), holder: holder.clone() })
        }
        Some(_) => Ok(()),
        None => {
            holders.insert(id, uri.to_string());
            Ok(())
        }
    }
}

fn spawn_decoders(
    fetched: mpsc::Receiver<Fetched>,
    known: HashMap<String, KnownImage>,
    to_embedder: mpsc::Sender<Examined>,
    limits: DecodeLimits,
    input: ModelInput,
    workers: usize,
) -> Vec<std::thread::JoinHandle<()>> {
    let fetched = Arc::new(Mutex::new(fetched));
    let known = Arc::new(known);
    (0..workers.max(1))
        .map(|n| {
            let (fetched, known, to_embedder) = (Arc::clone(&fetched), Arc::clone(&known), to_embedder.clone());
            std::thread::Builder::new()
                .name(format!("decode-{n}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next image, not while decoding.
                        let next = fetched.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).blocking_recv();
                        let Some(Fetched { image, bytes }) = next else { break };
                        let examined = examine(&image.uri, bytes, known.get(&image.uri), limits, input);
                        if to_embedder.blocking_send(examined).is_err() {
                            break; // the embedding stage stopped (error or shutdown)
                        }
                    }
                })
                .expect("spawning a decode thread")
        })
        .collect()
}

fn examine(
    uri: &str,
    bytes: Result<Vec<u8>, ReadError>,
    known: Option<&KnownImage>,
    limits: DecodeLimits,
    input: ModelInput,
) -> Examined {
    let failed = |content_hash: Option<String>, size_bytes: Option<i64>, reason: String, transient: bool| {
        Examined::Failed { uri: uri.to_string(), content_hash, size_bytes, reason, transient }
    };
    if uri.len() > MAX_URI_LENGTH as usize {
        let reason = format!("URI is {} bytes long, over the limit of {MAX_URI_LENGTH}", uri.len());
        return failed(None, None, reason, false);
    }
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(ReadError::Unusable { reason, size_bytes }) => {
            return failed(None, size_bytes.and_then(|size| i64::try_from(size).ok()), reason, false);
        }
        Err(error @ (ReadError::Unavailable { .. } | ReadError::Source(_))) => {
            return failed(None, None, error.to_string(), true);
        }
    };
    let content_hash = hex::encode(Sha256::digest(&bytes));
    if let Some(known) = known
        && known.content_hash.as_deref() == Some(content_hash.as_str())
        && matches!(known.status, ImageStatus::Indexed | ImageStatus::Failed)
    {
        return Examined::Unchanged;
    }
    match preprocess::prepare(&bytes, limits, input) {
        Ok(prepared) => Examined::Ready {
            image: NewImage {
                uri: uri.to_string(),
                content_hash,
                size_bytes: bytes.len() as i64,
                width: i64::from(prepared.width),
                height: i64::from(prepared.height),
            },
            prepared,
        },
        Err(e) => failed(Some(content_hash), Some(bytes.len() as i64), e.to_string(), false),
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
