//! The playground's files: the notebook page built from `web/` (`web/build.mjs`), compiled
//! into the binary, so the page needs nothing but this server (no CDN, no files on disk).
//! Served without a key, like `/docs`; everything the page does goes through the API and
//! its key. Compressed (brotli or gzip) when the browser accepts it.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use tower_http::compression::CompressionLayer;

use super::AppState;
use super::error::ApiError;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../web/dist/index.html"),
};

/// What `index.html` loads, under `assets/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/dist/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/dist/app.css"),
    },
];

/// The page tightly fenced: only its own scripts, styles and API; images may be data URLs
/// (figures) and blobs; nothing may frame it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data: blob:; \
     style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; \
     object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'";

/// The playground's routes (the page itself is `GET /`, see `system::root`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(super::system::root))
        .route("/assets/{name}", get(asset))
        .layer(CompressionLayer::new())
}

/// A strong validator per asset, computed once.
fn etag(asset: &Asset) -> &'static str {
    static TAGS: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .chain(std::iter::once(&INDEX))
            .map(|a| {
                let digest = Sha256::digest(a.body);
                (a.name, format!("\"{}\"", hex::encode(&digest[..12])))
            })
            .collect()
    });
    tags.iter()
        .find(|(name, _)| *name == asset.name)
        .map(|(_, tag)| tag.as_str())
        .unwrap_or("\"\"")
}

fn serve(asset: &'static Asset, headers: &HeaderMap) -> Response {
    let tag = etag(asset);
    // Revalidated on every load (a 304 is cheap), so a new binary's page shows at once.
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == tag)
        }) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::ETAG, HeaderValue::from_static(tag));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The notebook page.
pub fn index(headers: &HeaderMap) -> Response {
    let mut response = serve(&INDEX, headers);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .map(|a| serve(a, &headers))
        .ok_or_else(|| ApiError::not_found("No such playground file; the playground is at /."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_embedded_assets() {
        let page = std::str::from_utf8(INDEX.body).unwrap();
        for asset in ASSETS {
            assert!(
                page.contains(&format!("\"assets/{}\"", asset.name)),
                "{}",
                asset.name
            );
            assert!(!asset.body.is_empty());
        }
        assert!(!page.contains("http://") && !page.contains("https://"));
    }
}
