//! The web page: one self-contained HTML file compiled into the binary.

use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

const INDEX_HTML: &str = include_str!("../../assets/index.html");

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(index))
}

/// The web page: search by dropping or picking an image, results as a grid.
#[utoipa::path(get, path = "/", tag = "operations", responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Everything the page needs is inline or same-origin, except the thumbnails of a
            // URL-list collection: those are its images' own URLs, on other hosts.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' blob: data: https: http:; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
            ),
        ],
        INDEX_HTML,
    )
}
