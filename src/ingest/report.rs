//! What an ingest run did: printed at the end, returned as JSON with `--json`, and in a cluster
//! written as the ingest pod's termination message, where the controller reads it back into
//! the collection's status.

use serde::{Deserialize, Serialize};

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

    /// Counts one image that could not be indexed.
    pub(super) fn fail(&mut self, uri: String, reason: String) {
        self.failed += 1;
        self.failures.push(IngestFailure { uri, reason });
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
