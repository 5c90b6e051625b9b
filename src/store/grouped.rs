//! Searches that arrive together go to Milvus in one request. A request with several query
//! vectors costs Milvus less than as many requests (measured by `make bench-search`: 8 searches
//! in one request 19 ms, one request each at once 28 ms, on 2 cores), and queries do arrive
//! together: the model embeds them in batches and answers a whole batch at once.
//!
//! Nothing waits for company: the grouping task takes the first search as soon as it comes,
//! lets the tasks already woken beside it run (a scheduler yield, microseconds), takes what
//! they sent meanwhile, and sends each group of the same collection, `top_k` and filter as one
//! request, without waiting for earlier requests to finish. Each request keeps its own
//! patience; a group's failure is each member's failure, as it would have been alone.

use tokio::sync::{mpsc, oneshot};

use super::{Hit, IndexSpec, MilvusStore, SearchFilter, StoreError};

/// Most query vectors in one Milvus request.
pub const MAX_GROUP: usize = 16;

/// What one search got back, and how many it shared its request with.
#[derive(Debug)]
pub struct GroupedHits {
    pub hits: Vec<Hit>,
    /// Query vectors in the Milvus request that answered this one.
    pub group_size: usize,
}

struct Search {
    collection: String,
    vector: Vec<f32>,
    top_k: usize,
    filter: SearchFilter,
    reply: oneshot::Sender<Result<GroupedHits, StoreError>>,
}

impl Search {
    fn same_request_as(&self, other: &Search) -> bool {
        self.collection == other.collection && self.top_k == other.top_k && self.filter == other.filter
    }
}

/// The queue in front of Milvus searches. Dropping it ends the grouping task once the queue
/// is empty.
pub struct GroupedSearches {
    queue: mpsc::UnboundedSender<Search>,
}

impl GroupedSearches {
    /// Starts the grouping task on the current Tokio runtime. The queue needs no bound of its
    /// own: each search in it is a request already admitted (and bounded) by the model's queue,
    /// and the task moves searches on to Milvus as fast as they come.
    pub fn start(store: MilvusStore, index: IndexSpec) -> Self {
        let (queue, searches) = mpsc::unbounded_channel();
        tokio::spawn(group_searches(store, index, searches));
        Self { queue }
    }

    /// The `top_k` nearest of `vector` in `collection` under `filter`, searched with whatever
    /// other searches arrived at the same moment.
    pub async fn search(
        &self,
        collection: &str,
        vector: Vec<f32>,
        top_k: usize,
        filter: &SearchFilter,
    ) -> Result<GroupedHits, StoreError> {
        let (reply, answer) = oneshot::channel();
        let search = Search { collection: collection.to_string(), vector, top_k, filter: filter.clone(), reply };
        let stopped = || StoreError::Timeout {
            what: "the search queue (stopped)",
            collection: collection.to_string(),
            seconds: 0,
        };
        self.queue.send(search).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn group_searches(store: MilvusStore, index: IndexSpec, mut searches: mpsc::UnboundedReceiver<Search>) {
    while let Some(first) = searches.recv().await {
        // The first search goes out now; the yield only lets searches woken at the same moment
        // (the rest of a model batch) reach the queue first.
        tokio::task::yield_now().await;
        let mut waiting = vec![first];
        while waiting.len() < MAX_GROUP {
            match searches.try_recv() {
                Ok(search) => waiting.push(search),
                Err(_) => break,
            }
        }
        while let Some(lead) = waiting.pop() {
            let (mut group, rest): (Vec<Search>, Vec<Search>) =
                waiting.into_iter().partition(|search| search.same_request_as(&lead));
            waiting = rest;
            group.push(lead);
            tokio::spawn(search_group(store.clone(), index.clone(), group));
        }
    }
}

/// One Milvus request for `group` (same collection, `top_k` and filter); each member gets its
/// own query's hits, in the order the vectors were sent, or the request's error.
async fn search_group(store: MilvusStore, index: IndexSpec, group: Vec<Search>) {
    let (collection, top_k, filter) = (group[0].collection.clone(), group[0].top_k, group[0].filter.clone());
    let size = group.len();
    let (vectors, replies): (Vec<Vec<f32>>, Vec<_>) = group.into_iter().map(|s| (s.vector, s.reply)).unzip();
    match store.search_many(&collection, vectors, top_k, &filter, &index).await {
        Ok(results) if results.len() == size => {
            for (reply, hits) in replies.into_iter().zip(results) {
                // A client that went away no longer needs its answer.
                let _ = reply.send(Ok(GroupedHits { hits, group_size: size }));
            }
        }
        Ok(results) => {
            let error = StoreError::Timeout {
                what: "a search answer with one result per query vector",
                collection: collection.clone(),
                seconds: 0,
            };
            tracing::error!(sent = size, answered = results.len(), %collection, "Milvus answered a grouped search with the wrong number of results");
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
