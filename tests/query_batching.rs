//! The query batcher (issue 21) with the real model: queries that arrive together share a forward
//! pass, each still gets the vector of its own image, a lone query is not held for company, and a
//! full queue refuses instead of growing.

mod common;

use std::time::Duration;

use imgsearch::embed::batcher::{BatchError, BatchSettings, QueryBatcher};
use imgsearch::embed::preprocess::{self, DecodeLimits, PreparedImage};

const PHOTOS: [&str; 8] =
    ["astronaut.jpg", "brick.jpg", "camera.jpg", "chelsea.jpg", "coffee.jpg", "coins.jpg", "moon.jpg", "rocket.jpg"];

fn prepared(name: &str) -> PreparedImage {
    let bytes = std::fs::read(common::photo(name)).expect("a sample photo");
    preprocess::prepare(&bytes, DecodeLimits::default(), common::model().input()).expect("the photo decodes")
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

const ROOM: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_lone_query_runs_at_once_in_a_batch_of_its_own() {
    let batcher = QueryBatcher::start(common::model(), BatchSettings { max_batch: 16, max_queued: 16 });
    let embedded = batcher.embed(prepared("coffee.jpg"), ROOM).await.expect("the query is embedded");
    assert_eq!(embedded.batch_size, 1, "nothing else was queued, so nothing rode along");
    assert_eq!(embedded.vector.len(), common::model().dimension());
}

/// Eight different photos sent at once: the first runs alone, the others queue behind it and run
/// together. Each answer must be its own photo's embedding as the model gives it one at a time —
/// a batch that answered in the wrong order would give each query another photo's vector.
#[tokio::test]
async fn queries_embedded_together_each_get_the_vector_of_their_own_image() {
    let model = common::model();
    let alone: Vec<Vec<f32>> =
        PHOTOS.iter().map(|name| model.embed_batch(&[prepared(name)]).expect("embedded alone").remove(0)).collect();
    let batcher = QueryBatcher::start(model.clone(), BatchSettings { max_batch: 16, max_queued: 16 });
    let mut largest_batch = 0;
    for attempt in 0..5 {
        let queries = PHOTOS.iter().map(|name| batcher.embed(prepared(name), ROOM));
        let answers = futures::future::join_all(queries).await;
        for ((name, expected), answer) in PHOTOS.iter().zip(&alone).zip(answers) {
            let answer = answer.expect("every query is embedded");
            largest_batch = largest_batch.max(answer.batch_size);
            for (other, other_vector) in PHOTOS.iter().zip(&alone).filter(|(other, _)| *other != name) {
                assert!(
                    cosine(&answer.vector, other_vector) < 0.999,
                    "attempt {attempt}: {name} was answered with a vector as close to {other}'s as to its own"
                );
            }
            let similarity = cosine(&answer.vector, expected);
            assert!(
                similarity > 0.9999,
                "attempt {attempt}: {name} in a batch of {}: cosine {similarity} to its embedding alone",
                answer.batch_size
            );
        }
        if largest_batch > 1 {
            break;
        }
    }
    assert!(largest_batch > 1, "in 5 attempts no two of 8 concurrent queries shared a forward pass");
}

/// A queue of one in front of a batch of one: of 12 queries sent at once with no patience for
/// room, those that find it full are refused at once (the caller answers 503), the others are
/// embedded, and once the burst is over the batcher takes queries again.
#[tokio::test]
async fn a_full_queue_refuses_instead_of_growing_and_recovers() {
    let batcher = QueryBatcher::start(common::model(), BatchSettings { max_batch: 1, max_queued: 1 });
    let queries = (0..12).map(|_| batcher.embed(prepared("moon.jpg"), Duration::from_millis(1)));
    let answers = futures::future::join_all(queries).await;
    let refused = answers.iter().filter(|a| matches!(a, Err(BatchError::Full))).count();
    let embedded = answers.iter().filter(|a| a.is_ok()).count();
    assert_eq!(refused + embedded, 12, "only refusals for a full queue, no other failure: {answers:?}");
    assert!(refused > 0, "12 queries at once did not fill a queue of one");
    assert!(embedded > 0, "the queue's one place was never used");
    let after = batcher.embed(prepared("moon.jpg"), ROOM).await.expect("the batcher takes queries after the burst");
    assert_eq!(after.batch_size, 1);
}
