//! Progress of a long ingest: a bar on a terminal, a log line every few seconds otherwise, and
//! counters the search API reads for the bootcamp's `GET /progress`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default)]
pub struct Progress {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    current: AtomicU64,
    total: AtomicU64,
    display: Mutex<Option<Display>>,
}

#[derive(Debug)]
enum Display {
    Bar(ProgressBar),
    Log { last: Instant, started: Instant },
}

impl Progress {
    /// Counters only: for runs inside the search server.
    pub fn silent() -> Self {
        Self::default()
    }

    /// Counters plus a bar when stderr is a terminal, periodic log lines when it is not.
    pub fn visible() -> Self {
        let progress = Self::default();
        let display = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let bar = ProgressBar::hidden();
            let style =
                ProgressStyle::with_template("{spinner} ingest [{bar:40}] {pos}/{len} images {per_sec} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            bar.set_style(style);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            Display::Bar(bar)
        } else {
            Display::Log { last: Instant::now(), started: Instant::now() }
        };
        *progress.lock() = Some(display);
        progress
    }

    pub fn begin(&self, total: u64) {
        self.inner.current.store(0, Ordering::Relaxed);
        self.inner.total.store(total, Ordering::Relaxed);
        match &mut *self.lock() {
            Some(Display::Bar(bar)) => {
                bar.set_length(total);
                bar.set_position(0);
            }
            Some(Display::Log { last, started }) => {
                *last = Instant::now();
                *started = Instant::now();
            }
            None => {}
        }
    }

    pub fn advance(&self, by: u64) {
        let current = self.inner.current.fetch_add(by, Ordering::Relaxed) + by;
        let total = self.inner.total.load(Ordering::Relaxed);
        match &mut *self.lock() {
            Some(Display::Bar(bar)) => bar.set_position(current),
            Some(Display::Log { last, started }) if last.elapsed() >= LOG_EVERY => {
                *last = Instant::now();
                let rate = current as f64 / started.elapsed().as_secs_f64().max(1e-9);
                tracing::info!(current, total, images_per_second = format!("{rate:.1}"), "ingest progress");
            }
            _ => {}
        }
    }

    pub fn finish(&self) {
        if let Some(Display::Bar(bar)) = &*self.lock() {
            bar.finish_and_clear();
        }
    }

    /// (done, total) of the current or last run.
    pub fn snapshot(&self) -> (u64, u64) {
        (self.inner.current.load(Ordering::Relaxed), self.inner.total.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Display>> {
        self.inner.display.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
