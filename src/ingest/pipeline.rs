//! The stages of an ingest run, each a named function joined to the next by a bounded channel,
//! so memory stays flat however large the source is:
//!
//! read (several reads in flight, for network sources) → decode (hash, check, preprocess; on the
//! blocking pool, as many at once as there are decode workers) → triage (count what is unchanged;
//! record what failed, which writes: the catalog row marked failed and, when an indexed image
//! turned bad, its vector deleted first; refuse a derived id another URI holds; group the rest
//! into batches) → embed (one batch per model session at a time) → write (Milvus and the
//! catalog, in [`crate::index`]'s order, while the model embeds the next batch).
//!
//! Each stage owns its ends of the channels, so when one stops, on success or on an error, its
//! neighbours see a closed channel and stop too; nothing waits forever on a stage that is gone.
//! Reading, decoding and embedding use one idiom: a stream of futures run `buffer_unordered`.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{IngestError, IngestReport};
use crate::catalog::{Catalog, CatalogError, ImageStatus, KnownImage, NewImage};
use crate::embed::preprocess::{self, DecodeLimits, ModelInput, PreparedImage};
use crate::index::{ImageFailure, ImageIndex};
use crate::progress::Progress;
use crate::source::{ReadError, Source, SourceImage};
use crate::store::MAX_URI_LENGTH;

/// One image as the reading stage hands it to the decoders.
pub(super) struct Fetched {
    image: SourceImage,
    bytes: Result<Vec<u8>, ReadError>,
}

/// What decoding found out about one image.
pub(super) enum Examined {
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

/// A batch on its way to the model, and embedded on its way to the writer.
pub(super) type Batch = Vec<(NewImage, PreparedImage)>;
pub(super) type Embedded = (Vec<NewImage>, Vec<Vec<f32>>);

/// Reads `files`, several at once, and passes them on as they arrive. Stops at the first error
/// of the source itself (the bucket gone): what was read before still gets written, since the
/// later stages drain their channels before they stop.
pub(super) async fn read(
    source: &Source,
    files: Vec<SourceImage>,
    to_decoders: mpsc::Sender<Fetched>,
) -> Result<(), IngestError> {
    let mut reads = futures::stream::iter(files)
        .map(|image| async move {
            let bytes = source.read(&image).await;
            Fetched { image, bytes }
        })
        // Unordered: one slow URL must not hold up the reads that finished behind it.
        .buffer_unordered(source.read_concurrency());
    while let Some(fetched) = reads.next().await {
        if let Err(ReadError::Source(error)) = fetched.bytes {
            return Err(IngestError::Source(error));
        }
        if to_decoders.send(fetched).await.is_err() {
            break; // a later stage stopped; it reports why
        }
    }
    Ok(())
}

/// Decodes up to `workers` images at once on the blocking pool (decoding is CPU work: on 12 MP
/// photos 80 % of the run). A decoder that panics on an image fails that image, not the run.
pub(super) async fn decode(
    fetched: mpsc::Receiver<Fetched>,
    known: Arc<HashMap<String, KnownImage>>,
    limits: DecodeLimits,
    input: ModelInput,
    workers: usize,
    to_triage: mpsc::Sender<Examined>,
) {
    let mut fetched = fetched;
    let mut examined = futures::stream::poll_fn(|cx| fetched.poll_recv(cx))
        .map(|Fetched { image, bytes }| {
            let known = Arc::clone(&known);
            async move {
                let uri = image.uri;
                let decoding = {
                    let uri = uri.clone();
                    tokio::task::spawn_blocking(move || examine(&uri, bytes, known.get(&uri), limits, input))
                };
                decoding.await.unwrap_or_else(|panicked| Examined::Failed {
                    uri,
                    content_hash: None,
                    size_bytes: None,
                    reason: format!("the decoder failed on this file ({panicked}); please report it"),
                    transient: false,
                })
            }
        })
        .buffer_unordered(workers.max(1));
    while let Some(examined) = examined.next().await {
        if to_triage.send(examined).await.is_err() {
            break; // the triage stage stopped on an error; it reports it
        }
    }
}

/// What the triage stage needs besides its channels.
pub(super) struct Triage<'a> {
    pub index: &'a ImageIndex,
    pub collection: &'a str,
    pub batch_size: usize,
    pub known: &'a HashMap<String, KnownImage>,
    pub progress: &'a Progress,
}

/// Counts unchanged images, records failed ones (a catalog write, and a Milvus delete when an
/// indexed image turned bad; an indexed copy stays when the failure is only for now) and groups
/// the rest into batches for the model. Without a SQL catalog, refuses an
/// image whose derived id another URI already holds rather than let it overwrite that image.
pub(super) async fn triage(
    context: Triage<'_>,
    decoded: mpsc::Receiver<Examined>,
    to_model: mpsc::Sender<Batch>,
    report: &mut IngestReport,
) -> Result<(), IngestError> {
    let Triage { index, collection, batch_size, known, progress } = context;
    let batch_size = batch_size.max(1);
    let mut decoded = decoded;
    // Without a SQL catalog ids derive from URIs: which URI holds each id.
    let mut holders: HashMap<i64, String> = if index.catalog().derives_ids() {
        known.iter().map(|(uri, image)| (image.id, uri.clone())).collect()
    } else {
        HashMap::new()
    };
    let mut batch: Batch = Vec::with_capacity(batch_size);
    while let Some(examined) = decoded.recv().await {
        match examined {
            Examined::Unchanged => {
                report.skipped += 1;
                progress.advance(1);
            }
            Examined::Failed { uri, content_hash, size_bytes, reason, transient } => {
                let previous = known.get(&uri);
                let indexed = previous.is_some_and(|k| k.status == ImageStatus::Indexed);
                if !(transient && indexed) {
                    let failure =
                        ImageFailure { uri: &uri, content_hash: content_hash.as_deref(), size_bytes, reason: &reason };
                    index.record_failure(collection, previous, &failure).await?;
                }
                tracing::warn!(collection, uri, reason, "image failed");
                report.fail(uri, reason);
                progress.advance(1);
            }
            Examined::Ready { image, prepared } => {
                if let Err(taken) = claim_id(&mut holders, index.catalog(), collection, &image.uri) {
                    // Not recorded as this image's failure: the id's row is the other image's.
                    let reason = taken.to_string();
                    tracing::warn!(collection, uri = image.uri, reason, "image failed");
                    report.fail(image.uri, reason);
                    progress.advance(1);
                    continue;
                }
                batch.push((image, prepared));
                if batch.len() >= batch_size && to_model.send(std::mem::take(&mut batch)).await.is_err() {
                    return Ok(()); // a later stage stopped on an error; it reports it
                }
            }
        }
    }
    if !batch.is_empty() {
        let _ = to_model.send(batch).await;
    }
    Ok(())
}

/// Embeds up to one batch per model session at once.
pub(super) async fn embed(
    index: &ImageIndex,
    batches: mpsc::Receiver<Batch>,
    to_writer: mpsc::Sender<Embedded>,
) -> Result<(), IngestError> {
    let mut batches = batches;
    let mut vectors = futures::stream::poll_fn(|cx| batches.poll_recv(cx))
        .map(|batch| index.embed(batch))
        .buffer_unordered(index.model().sessions());
    while let Some(embedded) = vectors.next().await {
        if to_writer.send(embedded?).await.is_err() {
            break; // the writer stopped on an error; it reports it
        }
    }
    Ok(())
}

/// Writes each embedded batch; returns how many images were written.
pub(super) async fn write(
    index: &ImageIndex,
    collection: &str,
    embedded: mpsc::Receiver<Embedded>,
    progress: &Progress,
) -> Result<u64, IngestError> {
    let mut embedded = embedded;
    let mut written = 0u64;
    while let Some((images, vectors)) = embedded.recv().await {
        let count = index.write_embedded(collection, images, vectors).await?.len() as u64;
        written += count;
        progress.advance(count);
    }
    Ok(written)
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

/// One image's bytes → unchanged (same content as the indexed or failed copy), failed with the
/// reason, or ready for the model.
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
