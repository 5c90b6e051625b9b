//! Retrieval quality of the model on a labelled folder: precision@k, leave-one-out.
//!
//! Each image's label is the name of the first folder under the root it sits in. Every image is
//! used as a query against all the others (exact cosine similarity, no index in between, so the
//! figure measures the model and preprocessing, not the ANN index); precision@k is the share of
//! its k nearest neighbours that carry its label, averaged over all queries.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::embed::preprocess::{self, DecodeLimits};
use crate::embed::{EmbedError, EmbeddingModel};
use crate::source::{self, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error("need at least two labelled images with at least two labels, found {images} images with {labels} labels")]
    TooFew { images: usize, labels: usize },
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub images: usize,
    pub labels: usize,
    /// Images that could not be decoded and were left out.
    pub unreadable: usize,
    pub precision: Vec<PrecisionAtK>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrecisionAtK {
    pub k: usize,
    pub precision: f64,
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "model {}: {} images, {} labels, leave-one-out ({} unreadable left out)",
            self.model, self.images, self.labels, self.unreadable
        )?;
        for p in &self.precision {
            writeln!(f, "  precision@{:<3} {:.3}", p.k, p.precision)?;
        }
        write!(f, "  in {:.1} s", self.seconds)
    }
}

pub fn evaluate(
    model: &EmbeddingModel,
    root: &Path,
    ks: &[usize],
    limits: DecodeLimits,
    batch_size: usize,
) -> Result<EvalReport, EvalError> {
    let started = Instant::now();
    let root = root.canonicalize().map_err(|source| SourceError::Unreadable { path: root.to_path_buf(), source })?;
    let files = source::list_directory(&root)?;
    let mut labels = Vec::new();
    let mut vectors: Vec<Vec<f32>> = Vec::new();
    let mut unreadable = 0;
    for chunk in files.chunks(batch_size.max(1)) {
        let mut prepared = Vec::new();
        for file in chunk {
            let path = Path::new(&file.uri);
            let label = path
                .strip_prefix(&root)
                .ok()
                .and_then(|p| p.components().next())
                .map(|c| c.as_os_str().to_string_lossy().to_string());
            let bytes = std::fs::read(path).ok();
            match (label, bytes.map(|b| preprocess::prepare(&b, limits, model.input_size()))) {
                (Some(label), Some(Ok(image))) if path.parent() != Some(root.as_path()) => {
                    labels.push(label);
                    prepared.push(image);
                }
                (_, Some(Ok(_))) => {} // files directly in the root have no label
                _ => unreadable += 1,
            }
        }
        vectors.extend(model.embed_batch(&prepared)?);
    }
    let distinct: std::collections::BTreeSet<&String> = labels.iter().collect();
    if vectors.len() < 2 || distinct.len() < 2 {
        return Err(EvalError::TooFew { images: vectors.len(), labels: distinct.len() });
    }
    let precision = precision_at_k(&vectors, &labels, ks);
    Ok(EvalReport {
        model: model.spec().name.to_string(),
        images: vectors.len(),
        labels: distinct.len(),
        unreadable,
        precision,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Leave-one-out precision@k over L2-normalised vectors.
pub fn precision_at_k(vectors: &[Vec<f32>], labels: &[String], ks: &[usize]) -> Vec<PrecisionAtK> {
    let n = vectors.len();
    let max_k = ks.iter().copied().max().unwrap_or(0).min(n.saturating_sub(1));
    let mut sums = vec![0.0f64; ks.len()];
    for i in 0..n {
        let mut neighbours: Vec<(f32, usize)> = (0..n)
            .filter(|&j| j != i)
            .map(|j| (vectors[i].iter().zip(&vectors[j]).map(|(a, b)| a * b).sum::<f32>(), j))
            .collect();
        neighbours.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        neighbours.truncate(max_k);
        for (slot, &k) in ks.iter().enumerate() {
            let k = k.min(neighbours.len());
            if k == 0 {
                continue;
            }
            let hits = neighbours[..k].iter().filter(|(_, j)| labels[*j] == labels[i]).count();
            sums[slot] += hits as f64 / k as f64;
        }
    }
    ks.iter().zip(sums).map(|(&k, sum)| PrecisionAtK { k, precision: sum / n as f64 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_counts_same_label_neighbours_excluding_the_query() {
        // Two tight clusters, a and b; one b sits closer to the a's.
        let vectors = vec![vec![1.0, 0.0], vec![0.96, 0.28], vec![0.0, 1.0], vec![0.141, 0.99], vec![0.95, 0.312]];
        let labels: Vec<String> = ["a", "a", "b", "b", "b"].iter().map(|s| s.to_string()).collect();
        let p = precision_at_k(&vectors, &labels, &[1]);
        // Nearest neighbours: 0→1 (a ✓), 1→4 (b ✗), 2→3 (b ✓), 3→2 (b ✓), 4→1 (a ✗): 3 of 5.
        assert!((p[0].precision - 3.0 / 5.0).abs() < 1e-9, "{p:?}");
    }
}
