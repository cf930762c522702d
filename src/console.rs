//! The browser console: the frontend build embedded at compile time (see `build.rs`), or a directory given
//! with `serve --static-dir` (for frontend development: rebuilt files show without rebuilding the binary).

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;
use tower_http::services::{ServeDir, ServeFile};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/console.rs"));
}

/// Whether this binary was built with the console (frontend/dist existed at build time).
pub fn is_embedded() -> bool {
    embedded::FILES.iter().any(|(path, _)| *path == "index.html")
}

/// What `/` answers when this binary has no console and none was given with `--static-dir`.
pub const NOT_BUILT: &str = "SmartScheduler realtime: this binary was built without the browser console \
     (frontend/dist did not exist at build time). Build it with `make frontend` and rebuild the binary \
     (make run does both), or start serve with --static-dir <the frontend build>. The API is under /api.\n";

/// Adds the console to `app` as its fallback: everything that is not an API route.
pub fn serve<S: Clone + Send + Sync + 'static>(app: Router<S>, static_dir: Option<PathBuf>) -> Router<S> {
    match static_dir {
        Some(dir) => {
            // Unknown paths get index.html so that the single-page app can route them.
            let index = dir.join("index.html");
            let files = ServeDir::new(dir).fallback(ServeFile::new(index));
            app.fallback_service(tower::ServiceBuilder::new().map_response(with_charset).service(files))
        }
        None => app.fallback(embedded_file),
    }
}

/// One file of the embedded console. Unknown paths get index.html (the single-page app routes them),
/// except under `assets/`, where a missing file is a 404 rather than a page where a script was expected.
async fn embedded_file(method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET, HEAD")]).into_response();
    }
    if !is_embedded() {
        return (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], NOT_BUILT)
            .into_response();
    }
    let path = match uri.path().trim_start_matches('/') {
        "" => "index.html",
        path => path,
    };
    let found = find(path);
    let (path, bytes) = match found {
        Some(bytes) => (path, bytes),
        None if path.starts_with("assets/") => return StatusCode::NOT_FOUND.into_response(),
        None => ("index.html", find("index.html").unwrap_or_default()),
    };
    let content_type = content_type(mime_guess::from_path(path).first_or_octet_stream().as_ref());
    // Vite names assets by their content hash, so they never change; index.html names the current ones
    // and must be revalidated.
    let cache = if path.starts_with("assets/") { "public, max-age=31536000, immutable" } else { "no-cache" };
    let mut response = Response::new(if method == Method::HEAD { Body::empty() } else { Body::from(bytes) });
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    response
}

/// The Content-Type to send for `mime`: the console's text files (HTML, CSS, JavaScript) are UTF-8, as
/// Vite writes them, and say so, so that no browser guesses another charset.
fn content_type(mime: &str) -> String {
    if mime.starts_with("text/") && !mime.contains("charset") {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    }
}

/// [`content_type`] for a response of `--static-dir`'s file server.
fn with_charset(mut response: Response<tower_http::services::fs::ServeFileSystemResponseBody>) -> Response {
    let headers = response.headers_mut();
    let fixed = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(content_type);
    if let Some(value) = fixed.and_then(|t| HeaderValue::from_str(&t).ok()) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    response.map(Body::new)
}

fn find(path: &str) -> Option<&'static [u8]> {
    embedded::FILES.binary_search_by(|(p, _)| (*p).cmp(path)).ok().map(|i| embedded::FILES[i].1)
}
