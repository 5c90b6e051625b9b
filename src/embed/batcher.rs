//! Micro-batching of query embeddings, as inference servers do (Triton's dynamic batcher,
//! TorchServe's batch window without the window): a search puts its decoded image in a bounded
//! queue; each model session, as soon as it is free, takes whatever is waiting, up to a largest
//! batch, and embeds it in one forward pass. A lone query runs at once (nothing waits for
//! company); under load the model runs on batches, several times faster per image than one at a
//! time. The queue is bounded: a query that finds it full waits for room at most as long as the
//! caller allows, then is refused, so memory stays flat however many clients come.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{EmbedError, EmbeddingModel, PreparedImage};

/// How the batcher shares the model out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Most images in one forward pass.
    pub max_batch: usize,
    /// Most decoded images waiting for the model; more wait for room, then are refused.
    pub max_queued: usize,
}

impl Default for BatchSettings {
    /// Batches of one: measured with `make bench-search` on 2 cores (docs/benchmarks.md), the
    /// built-in model embeds no faster per image in batches (5.8 ms at 1 and at 32, one session
    /// on both cores), and with batches of 16 the server answered 32 clients at 0.41× the rate
    /// of batches of one, with 225 MiB more memory (ONNX Runtime's arena for the larger batch).
    /// Larger batches are a flag away for models and machines where they pay (a GPU, a
    /// transformer). 64 queued images (≈ 38 MiB of 224² tensors) keep 32 clients and more
    /// without a refusal.
    fn default() -> Self {
        Self { max_batch: 1, max_queued: 64 }
    }
}

/// One query's embedding and what it cost.
#[derive(Debug, Clone)]
pub struct BatchedEmbedding {
    pub vector: Vec<f32>,
    /// Images in the forward pass this one was part of.
    pub batch_size: usize,
    /// From entering the queue to its batch starting.
    pub waited: Duration,
    /// The forward pass.
    pub inference: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The queue stayed full for as long as the caller would wait.
    #[error("the inference queue is full")]
    Full,
    /// The batcher's sessions are gone (the model failed to run, or the server is stopping).
    #[error("the inference workers have stopped")]
    Stopped,
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

struct Job {
    image: PreparedImage,
    queued: Instant,
    reply: oneshot::Sender<Result<BatchedEmbedding, EmbedError>>,
}

/// The queue and the threads that embed from it, one per model session. Dropping it ends them
/// once the queue is empty.
pub struct QueryBatcher {
    queue: mpsc::Sender<Job>,
    settings: BatchSettings,
}

impl QueryBatcher {
    pub fn start(model: Arc<EmbeddingModel>, settings: BatchSettings) -> Self {
        let settings = BatchSettings { max_batch: settings.max_batch.max(1), max_queued: settings.max_queued.max(1) };
        let (queue, jobs) = mpsc::channel::<Job>(settings.max_queued);
        // The receiver is shared by the session threads; each holds it only while it gathers a
        // batch, not while the batch runs, so the other session can gather the next one.
        let jobs = Arc::new(Mutex::new(jobs));
        for session in 0..model.sessions() {
            let (model, jobs) = (Arc::clone(&model), Arc::clone(&jobs));
            let spawned = std::thread::Builder::new()
                .name(format!("query-batch-{session}"))
                .spawn(move || embed_batches(&model, &jobs, settings.max_batch));
            if let Err(error) = spawned {
                // Fewer sessions serve the queue; none at all shows as `Stopped` to every query.
                tracing::error!(%error, session, "could not start an inference thread");
            }
        }
        Self { queue, settings }
    }

    pub fn settings(&self) -> BatchSettings {
        self.settings
    }

    /// Embeds `image` in the next batch a session takes. Waits at most `room` for a place in the
    /// queue ([`BatchError::Full`] after that); once queued, waits for its batch.
    pub async fn embed(&self, image: PreparedImage, room: Duration) -> Result<BatchedEmbedding, BatchError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { image, queued: Instant::now(), reply };
        self.queue.send_timeout(job, room).await.map_err(|error| match error {
            mpsc::error::SendTimeoutError::Timeout(_) => BatchError::Full,
            mpsc::error::SendTimeoutError::Closed(_) => BatchError::Stopped,
        })?;
        Ok(answer.await.map_err(|_| BatchError::Stopped)??)
    }
}

/// A session's loop: wait for a first query, take the others already waiting (never waiting for
/// more), embed them together, answer each; until the queue is closed and empty.
fn embed_batches(model: &EmbeddingModel, jobs: &Mutex<mpsc::Receiver<Job>>, max_batch: usize) {
    loop {
        let batch = {
            // A poisoned lock only means another session panicked while gathering; the queue is sound.
            let mut jobs = jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(first) = jobs.blocking_recv() else { return };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        // Answers to clients that went away are not needed; their images still ride along
        // (cheaper than rebuilding the batch).
        let size = batch.len();
        let (images, waiting): (Vec<PreparedImage>, Vec<_>) =
            batch.into_iter().map(|job| (job.image, (job.queued, job.reply))).unzip();
        let started = Instant::now();
        let embedded = model.embed_batch(&images);
        let inference = started.elapsed();
        match embedded {
            Ok(vectors) => {
                for ((queued, reply), vector) in waiting.into_iter().zip(vectors) {
                    let waited = started.saturating_duration_since(queued);
                    let _ = reply.send(Ok(BatchedEmbedding { vector, batch_size: size, waited, inference }));
                }
            }
            Err(error) => {
                tracing::error!(%error, batch = size, "a query batch failed to embed");
                for (_, reply) in waiting {
                    let _ = reply.send(Err(EmbedError::Inference(error.to_string())));
                }
            }
        }
    }
}
