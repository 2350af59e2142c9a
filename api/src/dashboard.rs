//! The dashboard: a small web UI served by every node at `/` and `/ui/...`, from assets
//! compiled into the binary (no separate server, no CDN: it works on an air-gapped network).
//! It is plain HTML, CSS and one JavaScript module over the same REST API, with the user's key
//! kept in the browser tab's session storage. Pages: regions, runners (with capacity,
//! allocation and usage bars), sandboxes, and the cluster (admin key), which reads every
//! member's `/api/admin/cluster` itself and refreshes every second.

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// Scripts and styles from this node only; the cluster page may read other members' status.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                      connect-src 'self' http: https:; img-src 'self' data:; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        // Any other page under /ui is the same single page (it routes on the URL's fragment).
        .route("/ui/*page", get(index))
        .route("/ui/app.js", get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/ui/app.css", get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }))
}

async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The assets change with the binary: revalidate, never serve one node's old copy.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_its_assets_from_this_node_only() {
        assert!(INDEX_HTML.contains("src=\"/ui/app.js\"") && INDEX_HTML.contains("href=\"/ui/app.css\""));
        for asset in [INDEX_HTML, APP_JS, APP_CSS] {
            assert!(!asset.contains("//cdn") && !asset.contains("googleapis"), "no third-party assets");
        }
        // Server text is set as text: the script never assigns HTML.
        assert!(!APP_JS.contains("innerHTML") && !APP_JS.contains("outerHTML"));
    }
}
