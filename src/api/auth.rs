//! Bearer-token access control. With a token configured, the routes that change data (uploads,
//! folder loads, drops) require `Authorization: Bearer <token>`; searches, counts and image
//! bytes do too when reads are protected. Probes and the page itself stay open, so Kubernetes
//! can probe the pod and a browser can load the page (whose calls then need the token).

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};

/// The token (kept only as its SHA-256 digest) and what it guards.
#[derive(Clone)]
pub struct AuthConfig {
    digest: [u8; 32],
    /// Searches, counts and image bytes need the token too.
    pub protect_reads: bool,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token itself.
        f.debug_struct("AuthConfig").field("token", &"<redacted>").field("protect_reads", &self.protect_reads).finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthConfigError {
    #[error("the auth token is empty (a Secret key or token file with no content?)")]
    Empty,
    #[error("the auth token must be printable ASCII without spaces (HTTP headers carry nothing else reliably)")]
    Unsendable,
    #[error("cannot read the auth token file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("--auth-reads needs a token (--auth-token-file or IMGSEARCH_AUTH_TOKEN)")]
    ReadsWithoutToken,
}

/// Where the server's bearer token comes from.
#[derive(Clone, Default)]
pub enum TokenSource {
    /// No token: every route is open.
    #[default]
    None,
    /// A file holding it (a mounted Secret); read once, at start.
    File(std::path::PathBuf),
    /// The token itself (an environment variable set from a Secret).
    Value(String),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

impl TokenSource {
    /// The access control this token sets up, `None` when there is no token (and reads are not
    /// to be protected, which needs one).
    pub fn config(&self, protect_reads: bool) -> Result<Option<AuthConfig>, AuthConfigError> {
        let token = match self {
            Self::File(path) => std::fs::read_to_string(path).map_err(|error| AuthConfigError::Unreadable {
                path: path.display().to_string(),
                reason: error.to_string(),
            })?,
            Self::Value(token) => token.clone(),
            Self::None if protect_reads => return Err(AuthConfigError::ReadsWithoutToken),
            Self::None => return Ok(None),
        };
        Ok(Some(AuthConfig::new(&token, protect_reads)?))
    }
}

impl AuthConfig {
    /// A token as read from a file or a Secret: surrounding whitespace (a trailing newline) is
    /// dropped; an empty token or one no client could put in a header is refused at start.
    pub fn new(token: &str, protect_reads: bool) -> Result<Self, AuthConfigError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthConfigError::Empty);
        }
        if !token.chars().all(|c| c.is_ascii_graphic()) {
            return Err(AuthConfigError::Unsendable);
        }
        Ok(Self { digest: Sha256::digest(token.as_bytes()).into(), protect_reads })
    }

    /// Compared as SHA-256 digests (the expected one computed once, at start), byte by byte without an early exit, so the time taken says
    /// nothing about how much of a guess was right (not even its length).
    fn accepts(&self, presented: &str) -> bool {
        let presented = Sha256::digest(presented.as_bytes());
        self.digest.iter().zip(presented.iter()).fold(0u8, |difference, (a, b)| difference | (a ^ b)) == 0
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Probes, the page and the API's description: always open.
    Open,
    Read,
    Write,
}

/// Every route of the server, classified; closed by default: any method but GET and HEAD is a
/// write unless it is one of the POST routes that only read (a search uploads its query image).
/// Unknown GET paths count as reads (they 404 anyway, and a protected server should not say
/// which paths exist).
pub fn access(method: &Method, path: &str) -> Access {
    match (method, path) {
        (&Method::GET | &Method::HEAD, "/healthz" | "/readyz" | "/" | "/openapi.json") => Access::Open,
        (&Method::GET | &Method::HEAD, _) => Access::Read,
        (&Method::POST, "/v1/search" | "/img/search" | "/img/count") => Access::Read,
        _ => Access::Write,
    }
}

/// The credentials of an `Authorization: Bearer <token>` header; the scheme name is
/// case-insensitive (RFC 7235).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

pub async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Result<Response, ApiError> {
    let Some(auth) = &state.config.auth else { return Ok(next.run(request).await) };
    let needed = match access(request.method(), request.uri().path()) {
        Access::Open => false,
        Access::Read => auth.protect_reads,
        Access::Write => true,
    };
    if needed {
        let presented =
            request.headers().get(header::AUTHORIZATION).and_then(|value| value.to_str().ok()).and_then(bearer);
        match presented {
            None => return Err(ApiError::Unauthorized("this route needs `Authorization: Bearer <token>`".into())),
            Some(token) if !auth.accepts(token) => {
                tracing::warn!(path = %request.uri().path(), "request with a wrong bearer token refused");
                return Err(ApiError::Unauthorized("the bearer token is not valid".into()));
            }
            Some(_) => {}
        }
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_must_match_exactly() {
        let auth = AuthConfig::new("s3cret-token\n", false).expect("valid");
        assert!(auth.accepts("s3cret-token"));
        assert!(!auth.accepts("s3cret-toke"));
        assert!(!auth.accepts("s3cret-token2"));
        assert!(!auth.accepts(""));
        assert!(!format!("{auth:?}").contains("s3cret"), "Debug never shows the token");
    }

    #[test]
    fn empty_or_unsendable_tokens_are_refused_at_start() {
        assert_eq!(AuthConfig::new(" \n", false).unwrap_err(), AuthConfigError::Empty);
        assert_eq!(AuthConfig::new("two words", false).unwrap_err(), AuthConfigError::Unsendable);
        assert_eq!(AuthConfig::new("jeton-été", false).unwrap_err(), AuthConfigError::Unsendable);
    }

    #[test]
    fn writes_reads_and_open_routes_are_told_apart() {
        assert_eq!(access(&Method::POST, "/v1/images"), Access::Write);
        assert_eq!(access(&Method::POST, "/img/drop"), Access::Write);
        assert_eq!(access(&Method::POST, "/v1/search"), Access::Read);
        assert_eq!(access(&Method::GET, "/data"), Access::Read);
        assert_eq!(access(&Method::GET, "/readyz"), Access::Open);
        assert_eq!(access(&Method::GET, "/nope"), Access::Read);
        assert_eq!(access(&Method::POST, "/img/count"), Access::Read);
        // Closed by default: a route added later with another method needs the token.
        assert_eq!(access(&Method::DELETE, "/v1/images/7"), Access::Write);
        assert_eq!(access(&Method::POST, "/v1/something-new"), Access::Write);
        assert_eq!(access(&Method::POST, "/healthz"), Access::Write);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_nothing_else_counts() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
    }
}
