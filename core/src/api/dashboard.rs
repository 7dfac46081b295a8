//! The dashboard (`GET /dashboard`): one page, its script and style, and the vendored
//! Chart.js, embedded in the binary; no build step. The page asks for an API key and
//! makes every data call with it (`docs/stream.md`).

use axum::{
    http::{
        header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS},
        HeaderValue,
    },
    response::{IntoResponse, Redirect, Response},
    routing::get,
    Router,
};

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");
/// Chart.js, as `dashboard/vendor/VENDOR.md` records it.
const CHART_JS: &[u8] = include_bytes!("dashboard/vendor/chart.umd.min.js");

/// Everything the page loads comes from this server; the data calls go to it too.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes: open, since the page holds no data.
pub(super) fn routes() -> Router {
    Router::new()
        .route("/dashboard", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML.as_bytes()) }))
        .route("/dashboard/", get(|| async { Redirect::permanent("/dashboard") }))
        .route("/dashboard/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS.as_bytes()) }))
        .route("/dashboard/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS.as_bytes()) }))
        .route(
            "/dashboard/vendor/chart.umd.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", CHART_JS) }),
        )
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
        (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    /// The embedded Chart.js is the file `VENDOR.md` names, byte for byte.
    #[test]
    fn the_vendored_chart_js_is_the_recorded_one() {
        let record = include_str!("dashboard/vendor/VENDOR.md");
        let recorded = record
            .lines()
            .find_map(|line| line.strip_prefix("| chart.umd.min.js sha256 | `")?.strip_suffix("` |"))
            .expect("VENDOR.md records the file's sha256");
        assert_eq!(hex::encode(Sha256::digest(CHART_JS)), recorded);
        assert!(record.contains("| version | `4.6.1` (exact) |"));
        assert!(std::str::from_utf8(CHART_JS).unwrap().starts_with("/*!\n * Chart.js v4.6.1\n"));
    }

    /// The page loads only what is served here.
    #[test]
    fn the_page_loads_its_assets_from_this_server() {
        for asset in ["/dashboard/app.js", "/dashboard/style.css", "/dashboard/vendor/chart.umd.min.js"] {
            assert!(INDEX_HTML.contains(&format!("\"{asset}\"")), "{asset}");
        }
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
    }
}
