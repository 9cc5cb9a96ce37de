//! The web playground and status page at `/`: its files (embedded in the binary from `ui/`), the headers that confine them, and Plotly's script served from the root filesystem.
//!
//! The page is a client of the public API like any other (same routes, same keys). What a
//! run returns as HTML or a chart is drawn in `/ui/frame.html`, which the page embeds with
//! `sandbox="allow-scripts"` and which carries its own `sandbox` CSP: an opaque origin
//! that may run the result's scripts but cannot reach the page, its storage, or any URL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::error::ApiError;
use super::AppState;

/// The page's own policy: its scripts and styles from this origin only (no inline code,
/// no eval), API calls to this origin only, frames only of this origin (the result
/// frame), and never framed by another page.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob:; connect-src 'self'; frame-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The result frame's policy. `sandbox allow-scripts` gives it an opaque origin even if it
/// is opened outside the page; inline scripts run (a result's HTML carries them) but no
/// request leaves it except for this origin's scripts (Plotly) and inline images.
const FRAME_CSP: &str = "sandbox allow-scripts; default-src 'none'; \
     script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; \
     img-src data: blob:; font-src data:; connect-src 'none'; form-action 'none'; \
     base-uri 'none'; frame-ancestors 'self'";

/// One embedded file of the page.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:literal) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/", $file)),
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("/", "index.html", "text/html; charset=utf-8"),
    asset!("/ui/app.js", "app.js", "text/javascript; charset=utf-8"),
    asset!("/ui/style.css", "style.css", "text/css; charset=utf-8"),
    asset!("/ui/frame.html", "frame.html", "text/html; charset=utf-8"),
    asset!("/ui/frame.js", "frame.js", "text/javascript; charset=utf-8"),
    asset!("/ui/favicon.svg", "favicon.svg", "image/svg+xml"),
];

/// Whether the page is served, and where Plotly's script is.
#[derive(Clone, Default)]
pub struct Ui {
    enabled: bool,
    plotly: Option<Arc<PathBuf>>,
}

impl Ui {
    /// The page served, Plotly taken from the plotly package in `rootfs` if it has one.
    pub fn new(rootfs: &Path) -> Ui {
        let plotly = find_plotly(rootfs);
        if plotly.is_none() {
            tracing::info!(
                "no plotly.min.js in the root filesystem: the page shows Plotly results as text"
            );
        }
        Ui {
            enabled: true,
            plotly: plotly.map(Arc::new),
        }
    }

    /// No page: `/` and `/ui/*` are 404 like any unknown path.
    pub fn off() -> Ui {
        Ui::default()
    }
}

/// `plotly/package_data/plotly.min.js` in the Python packages of the root filesystem
/// (pip's `dist-packages` on Debian, `site-packages` elsewhere).
fn find_plotly(rootfs: &Path) -> Option<PathBuf> {
    ["usr/local/lib", "usr/lib"].iter().find_map(|lib| {
        let mut pythons: Vec<PathBuf> = std::fs::read_dir(rootfs.join(lib))
            .ok()?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path())
            .collect();
        pythons.sort();
        pythons.iter().find_map(|python| {
            ["dist-packages", "site-packages"].iter().find_map(|dir| {
                let file = python.join(dir).join("plotly/package_data/plotly.min.js");
                file.is_file().then_some(file)
            })
        })
    })
}

/// The page's routes, open without a key (the page asks for one itself; nothing here
/// tells more than the binary does); none when the page is off, so `/` is the API's 404.
/// On a keyless server they answer under the `Host` rule only (`origin::loopback_host`).
pub fn routes(state: &AppState) -> Router<AppState> {
    let mut router = Router::new();
    if !state.ui.enabled {
        return router;
    }
    for asset in ASSETS {
        router = router.route(asset.path, get(move || serve(asset)));
    }
    router.route("/ui/plotly.min.js", get(plotly)).route_layer(
        axum::middleware::from_fn_with_state(state.clone(), super::origin::loopback_host),
    )
}

fn headers(csp: &'static str, content_type: &'static str) -> [(HeaderName, HeaderValue); 6] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(csp),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        // For browsers that predate frame-ancestors.
        (
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static(if csp == FRAME_CSP {
                "SAMEORIGIN"
            } else {
                "DENY"
            }),
        ),
        // The page changes with the binary; a stale copy would talk to a newer API.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ]
}

async fn serve(asset: &'static Asset) -> Response {
    let csp = if asset.path == "/ui/frame.html" {
        FRAME_CSP
    } else {
        PAGE_CSP
    };
    (headers(csp, asset.content_type), asset.body).into_response()
}

/// Plotly's script, read from the root filesystem when asked (4.8 MB that most servers
/// never send); the browser keeps it a day.
async fn plotly(State(state): State<AppState>) -> Response {
    let Some(path) = state.ui.plotly.as_ref() else {
        return ApiError::not_found().into_response();
    };
    let file = path.clone();
    let read = tokio::task::spawn_blocking(move || std::fs::read(file.as_path())).await;
    match read.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
        Ok(bytes) => {
            let mut response =
                (headers(PAGE_CSP, "text/javascript; charset=utf-8"), bytes).into_response();
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            );
            response
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), "reading plotly.min.js: {e}");
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "Plotly's script is not available",
            )
            .into_response()
        }
    }
}
