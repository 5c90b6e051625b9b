//! Logging on stderr, filtered by `RUST_LOG` (default `info`): readable lines on a terminal,
//! one JSON object per line otherwise (a pod's log, a file), so log collectors get fields
//! (request_id, status, took_ms, …) without parsing text. `IMGSEARCH_LOG_FORMAT=text|json`
//! overrides the choice.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

fn format(setting: Option<&str>, terminal: bool) -> Format {
    match setting.map(str::trim) {
        Some("json") => Format::Json,
        Some("text") => Format::Text,
        _ if terminal => Format::Text,
        _ => Format::Json,
    }
}

pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn,hyper=warn"));
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format(std::env::var("IMGSEARCH_LOG_FORMAT").ok().as_deref(), terminal) {
        Format::Text => builder.with_ansi(terminal).try_init(),
        // The current span's fields (the request id) on every line; no ANSI codes in JSON.
        Format::Json => builder.json().with_current_span(true).with_span_list(false).with_ansi(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_off_a_terminal_text_on_one_unless_told() {
        assert_eq!(format(None, true), Format::Text);
        assert_eq!(format(None, false), Format::Json);
        assert_eq!(format(Some("text"), false), Format::Text);
        assert_eq!(format(Some("json"), true), Format::Json);
        assert_eq!(format(Some("yaml"), true), Format::Text, "an unknown value falls back to the default");
    }
}
