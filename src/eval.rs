//! Retrieval quality of the model, two ways, both with exact cosine similarity (no index in
//! between, so the figures measure the model and preprocessing, not the ANN index):
//!
//! - **Labelled folders**: precision@k, leave-one-out. Each image's label is the name of the
//!   first folder under the root it sits in; every image is a query against all the others, and
//!   precision@k is the share of its k nearest neighbours that carry its label.
//! - **Near-duplicates**: recall@1 and mean reciprocal rank of altered copies (cropped, mirrored,
//!   downscaled, re-encoded, screenshotted, EXIF-rotated) searched against an index of their
//!   originals plus distractors, per kind of alteration, with the distances that decide what
//!   `max_distance` finds (scripts/make_near_duplicates.py builds the set).
//!
//! [`run`] is `imgsearch eval`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::embed::preprocess::{self, DecodeLimits, PreparedImage};
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
    #[error("near-duplicate set {root}: {message}")]
    NearDuplicateLayout { root: PathBuf, message: String },
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
            match (label, bytes.map(|b| preprocess::prepare(&b, limits, model.input()))) {
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
        let mut neighbours: Vec<(f32, usize)> =
            (0..n).filter(|&j| j != i).map(|j| (dot(&vectors[i], &vectors[j]), j)).collect();
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

/// `imgsearch eval` as its flags give it.
#[derive(Debug, Clone)]
pub struct EvalCommand {
    /// A root whose sub-folders are the labels: precision@k, leave-one-out.
    pub labels_from_dirs: Option<PathBuf>,
    /// A near-duplicate set (originals/, distractors/, queries/<kind>/).
    pub near_duplicates: Option<PathBuf>,
    /// Cut-offs to report.
    pub k: Vec<usize>,
    /// Print the reports as JSON instead of tables.
    pub json: bool,
    pub model: crate::embed::ModelSettings,
}

/// Runs the benchmarks asked for and prints their reports.
pub async fn run(command: EvalCommand) -> anyhow::Result<()> {
    // Evaluation embeds batch after batch from one thread: one session on every core is fastest.
    let model = command.model.load(crate::embed::Workload::Latency).await?;
    let limits = command.model.limits;
    let mut json = serde_json::Map::new();
    if let Some(root) = command.labels_from_dirs.clone() {
        let (model, ks) = (model.clone(), command.k.clone());
        let report = tokio::task::spawn_blocking(move || evaluate(&model, &root, &ks, limits, 32)).await??;
        if !command.json {
            println!("{report}");
        }
        json.insert("labelled".into(), serde_json::to_value(&report)?);
    }
    if let Some(root) = command.near_duplicates.clone() {
        let model = model.clone();
        let report = tokio::task::spawn_blocking(move || evaluate_near_duplicates(&model, &root, limits, 32)).await??;
        if !command.json {
            println!("{report}");
        }
        json.insert("near_duplicates".into(), serde_json::to_value(&report)?);
    }
    if command.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_take_nearest_rank_percentiles() {
        let summary = summarise((1..=10).rev().map(|v| v as f32 / 10.0).collect());
        assert_eq!((summary.min, summary.median, summary.p90, summary.max), (0.1, 0.5, 0.9, 1.0));
        let single = summarise(vec![0.25]);
        assert_eq!((single.min, single.median, single.p90, single.max), (0.25, 0.25, 0.25, 0.25));
    }

    #[test]
    fn kind_reports_count_ranks_and_cutoffs() {
        // Ranks 1, 1, 2, 4 at distances 0.01, 0.08, 0.15, 0.5.
        let report = kind_report("crop", &[(1, 0.01), (1, 0.08), (2, 0.15), (4, 0.5)]);
        assert_eq!(report.queries, 4);
        assert!((report.recall_at_1 - 0.5).abs() < 1e-9, "{report:?}");
        assert!((report.mean_reciprocal_rank - (1.0 + 1.0 + 0.5 + 0.25) / 4.0).abs() < 1e-9, "{report:?}");
        let shares: Vec<f64> = report.within.iter().map(|w| w.share).collect();
        assert_eq!(shares, vec![0.25, 0.5, 0.75, 0.75]);
    }

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

/// Where a near-duplicate set keeps its parts (see scripts/make_near_duplicates.py).
const ORIGINALS: &str = "originals";
const DISTRACTORS: &str = "distractors";
const QUERIES: &str = "queries";

/// Distances at which the report counts what a `max_distance` cut-off would find.
pub const DISTANCE_CUTOFFS: [f32; 4] = [0.05, 0.1, 0.2, 0.3];

#[derive(Debug, Clone, Serialize)]
pub struct NearDuplicateReport {
    pub model: String,
    /// Indexed photos that queries must find.
    pub originals: usize,
    /// Indexed images no query is a copy of.
    pub distractors: usize,
    /// Files that could not be decoded and were left out (a query whose original is missing counts here too).
    pub unreadable: Vec<String>,
    pub kinds: Vec<KindReport>,
    /// All kinds together.
    pub overall: KindReport,
    /// Cosine distance from each original to the nearest other indexed image: what a cut-off
    /// must stay below to report no false pairs.
    pub distinct: DistanceSummary,
    /// Pairs of different indexed images within each of [`DISTANCE_CUTOFFS`] (false pairs).
    pub distinct_pairs_within: Vec<CutoffCount>,
    /// Queries whose original did not come first, with what did.
    pub misses: Vec<Miss>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KindReport {
    pub kind: String,
    pub queries: usize,
    /// Share of queries whose nearest indexed image is their original.
    pub recall_at_1: f64,
    /// Mean of 1 / (rank of the original).
    pub mean_reciprocal_rank: f64,
    /// Cosine distance from each query to its original.
    pub distance: DistanceSummary,
    /// Share of queries within each of [`DISTANCE_CUTOFFS`] of their original.
    pub within: Vec<CutoffShare>,
}

#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct DistanceSummary {
    pub min: f32,
    pub median: f32,
    pub p90: f32,
    pub max: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Miss {
    pub query: String,
    pub rank: usize,
    /// The image ranked first instead, and its distance.
    pub nearest: String,
    pub nearest_distance: f32,
    pub original_distance: f32,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct CutoffShare {
    pub max_distance: f32,
    pub share: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct CutoffCount {
    pub max_distance: f32,
    pub pairs: usize,
}

impl std::fmt::Display for NearDuplicateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "model {}: near-duplicates, {} originals + {} distractors indexed, {} queries ({} unreadable left out)",
            self.model,
            self.originals,
            self.distractors,
            self.overall.queries,
            self.unreadable.len()
        )?;
        let cutoffs: String = DISTANCE_CUTOFFS.iter().map(|c| format!(" {c:>5}")).collect();
        writeln!(f, "                       recall          distance to its original      found within")?;
        writeln!(
            f,
            "  {:<11} {:>7} {:>6} {:>6}   {:>6} {:>6} {:>6} {:>6}   {cutoffs}",
            "kind", "queries", "@1", "MRR", "min", "median", "p90", "max"
        )?;
        for kind in self.kinds.iter().chain(std::iter::once(&self.overall)) {
            let within: String = kind.within.iter().map(|w| format!(" {:>5.3}", w.share)).collect();
            writeln!(
                f,
                "  {:<11} {:>7} {:>6.3} {:>6.3}   {:>6.3} {:>6.3} {:>6.3} {:>6.3}   {within}",
                kind.kind,
                kind.queries,
                kind.recall_at_1,
                kind.mean_reciprocal_rank,
                kind.distance.min,
                kind.distance.median,
                kind.distance.p90,
                kind.distance.max
            )?;
        }
        let pairs: String =
            self.distinct_pairs_within.iter().map(|c| format!(" {} within {},", c.pairs, c.max_distance)).collect();
        writeln!(
            f,
            "  distinct images: nearest other at min {:.3}, median {:.3};{}",
            self.distinct.min,
            self.distinct.median,
            pairs.trim_end_matches(',')
        )?;
        for miss in &self.misses {
            writeln!(
                f,
                "  miss: {} ranks its original #{} ({:.3}); first is {} ({:.3})",
                miss.query, miss.rank, miss.original_distance, miss.nearest, miss.nearest_distance
            )?;
        }
        for name in &self.unreadable {
            writeln!(f, "  unreadable: {name}")?;
        }
        write!(f, "  in {:.1} s", self.seconds)
    }
}

/// Runs the near-duplicate benchmark in `root`: `originals/` and `distractors/` are indexed,
/// each `queries/<kind>/<name>.<ext>` is a copy of `originals/<name>.<any ext>`.
pub fn evaluate_near_duplicates(
    model: &EmbeddingModel,
    root: &Path,
    limits: DecodeLimits,
    batch_size: usize,
) -> Result<NearDuplicateReport, EvalError> {
    let started = Instant::now();
    let layout = |message: String| EvalError::NearDuplicateLayout { root: root.to_path_buf(), message };
    let list = |folder: &str| -> Result<Vec<PathBuf>, EvalError> {
        let dir = root.join(folder);
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        Ok(source::list_directory(&dir)?.into_iter().map(|image| PathBuf::from(image.uri)).collect())
    };
    let originals = list(ORIGINALS)?;
    if originals.is_empty() {
        return Err(layout(format!("no images in {ORIGINALS}/; build the set with scripts/make_near_duplicates.py")));
    }
    let distractors = list(DISTRACTORS)?;
    let queries = list(QUERIES)?;

    let mut unreadable = Vec::new();
    let mut index_names: Vec<String> = Vec::new();
    let mut index: Vec<Vec<f32>> = Vec::new();
    let mut readable_originals = 0;
    for (part, is_original) in [(&originals, true), (&distractors, false)] {
        let files: Vec<&PathBuf> = part.iter().collect();
        for (path, vector) in files.iter().zip(embed_files(model, &files, limits, batch_size)?) {
            match vector {
                Some(vector) => {
                    index_names.push(stem(path));
                    index.push(vector);
                    readable_originals += usize::from(is_original);
                }
                None => unreadable.push(relative(root, path)),
            }
        }
    }
    // Originals come first in the index, so their positions are their ids.
    let original_position: HashMap<&str, usize> =
        index_names[..readable_originals].iter().enumerate().map(|(i, name)| (name.as_str(), i)).collect();

    // Per kind: (rank of the original, distance to it) for each readable query.
    let mut outcomes: Vec<(String, Vec<(usize, f32)>)> = Vec::new();
    let mut misses = Vec::new();
    let query_files: Vec<&PathBuf> = queries.iter().collect();
    for (path, vector) in query_files.iter().zip(embed_files(model, &query_files, limits, batch_size)?) {
        let kind = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|k| k.to_string_lossy().to_string())
            .filter(|k| k != QUERIES)
            .ok_or_else(|| layout(format!("{} is not in a queries/<kind>/ folder", relative(root, path))))?;
        let (Some(vector), Some(&target)) = (vector, original_position.get(stem(path).as_str())) else {
            unreadable.push(relative(root, path));
            continue;
        };
        let similarities: Vec<f32> = index.iter().map(|candidate| dot(&vector, candidate)).collect();
        let target_similarity = similarities[target];
        let rank = 1 + similarities.iter().filter(|&&s| s > target_similarity).count();
        let outcome = (rank, 1.0 - target_similarity);
        if rank > 1 {
            let (nearest, similarity) = similarities
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, s)| (index_names[i].clone(), *s))
                .unwrap_or_default();
            misses.push(Miss {
                query: relative(root, path),
                rank,
                nearest,
                nearest_distance: 1.0 - similarity,
                original_distance: outcome.1,
            });
        }
        match outcomes.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, list)) => list.push(outcome),
            None => outcomes.push((kind, vec![outcome])),
        }
    }
    if outcomes.is_empty() {
        return Err(layout(format!("no readable queries in {QUERIES}/<kind>/ whose original is in {ORIGINALS}/")));
    }

    let kinds: Vec<KindReport> = outcomes.iter().map(|(kind, list)| kind_report(kind, list)).collect();
    let all: Vec<(usize, f32)> = outcomes.iter().flat_map(|(_, list)| list.iter().copied()).collect();
    let overall = kind_report("all", &all);

    let mut nearest_other = Vec::with_capacity(readable_originals);
    let mut distinct_pairs_within = DISTANCE_CUTOFFS.map(|max_distance| CutoffCount { max_distance, pairs: 0 });
    for i in 0..index.len() {
        let mut nearest = f32::INFINITY;
        for j in 0..index.len() {
            if i == j {
                continue;
            }
            let distance = 1.0 - dot(&index[i], &index[j]);
            nearest = nearest.min(distance);
            if j > i {
                for cutoff in distinct_pairs_within.iter_mut().filter(|c| distance <= c.max_distance) {
                    cutoff.pairs += 1;
                }
            }
        }
        if i < readable_originals && nearest.is_finite() {
            nearest_other.push(nearest);
        }
    }

    Ok(NearDuplicateReport {
        model: model.spec().name.to_string(),
        originals: readable_originals,
        distractors: index.len() - readable_originals,
        unreadable,
        kinds,
        overall,
        distinct: summarise(nearest_other),
        distinct_pairs_within: distinct_pairs_within.to_vec(),
        misses,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn kind_report(kind: &str, outcomes: &[(usize, f32)]) -> KindReport {
    let n = outcomes.len().max(1) as f64;
    let distances: Vec<f32> = outcomes.iter().map(|&(_, d)| d).collect();
    KindReport {
        kind: kind.to_string(),
        queries: outcomes.len(),
        recall_at_1: outcomes.iter().filter(|&&(rank, _)| rank == 1).count() as f64 / n,
        mean_reciprocal_rank: outcomes.iter().map(|&(rank, _)| 1.0 / rank as f64).sum::<f64>() / n,
        within: DISTANCE_CUTOFFS
            .iter()
            .map(|&max_distance| CutoffShare {
                max_distance,
                share: distances.iter().filter(|&&d| d <= max_distance).count() as f64 / n,
            })
            .collect(),
        distance: summarise(distances),
    }
}

/// Min, median, 90th percentile (nearest rank) and max.
fn summarise(mut values: Vec<f32>) -> DistanceSummary {
    if values.is_empty() {
        return DistanceSummary::default();
    }
    values.sort_by(f32::total_cmp);
    let at = |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    DistanceSummary { min: values[0], median: at(0.5), p90: at(0.9), max: values[values.len() - 1] }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default()
}

fn relative(root: &Path, path: &Path) -> String {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    path.strip_prefix(&root).unwrap_or(path).display().to_string()
}

/// One L2-normalised vector per file (None where the file cannot be read or decoded). All
/// files are decoded first, on every core (the set's originals are full-size wallpapers), then
/// embedded in batches.
fn embed_files(
    model: &EmbeddingModel,
    files: &[&PathBuf],
    limits: DecodeLimits,
    batch_size: usize,
) -> Result<Vec<Option<Vec<f32>>>, EmbedError> {
    let input = model.input();
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(files.len().max(1));
    let mut prepared: Vec<Option<PreparedImage>> = vec![None; files.len()];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = files.get(i) else { break };
                        let image = std::fs::read(path).ok().and_then(|b| preprocess::prepare(&b, limits, input).ok());
                        done.push((i, image));
                    }
                    done
                })
            })
            .collect();
        for handle in handles {
            // A decoder thread that panicked leaves its files unreadable rather than failing the run.
            for (i, image) in handle.join().unwrap_or_default() {
                prepared[i] = image;
            }
        }
    });
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; files.len()];
    let readable: Vec<usize> = (0..files.len()).filter(|&i| prepared[i].is_some()).collect();
    for chunk in readable.chunks(batch_size.max(1)) {
        let batch: Vec<PreparedImage> = chunk.iter().filter_map(|&i| prepared[i].take()).collect();
        for (&i, vector) in chunk.iter().zip(model.embed_batch(&batch)?) {
            vectors[i] = Some(vector);
        }
    }
    Ok(vectors)
}
