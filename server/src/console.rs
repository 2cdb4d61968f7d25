//! The web console (`GET /console`): one HTML page, one script and one style sheet, embedded in
//! the binary (`server/console/`), that use the HTTP API and its WebSocket subscriptions as
//! any client does. No framework and no build step: the files are what the browser runs, so
//! `cargo build` is all it takes and there is nothing to fetch at run time (see README, "The
//! console").
//!
//! The assets hold no data and need no role; what they show comes from the API, which checks
//! the user's token as for every client. They are served with a Content Security Policy that
//! lets the page load only its own assets and talk only to its own server
//! (`default-src 'self'`), and `X-Content-Type-Options: nosniff`.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};

/// The page.
const INDEX: &str = include_str!("../console/index.html");
/// Its script (an ES module).
const SCRIPT: &str = include_str!("../console/console.js");
/// Its style sheet.
const STYLE: &str = include_str!("../console/console.css");

/// The policy: the page's own assets, and requests (`fetch`, WebSocket) to its own server.
const POLICY: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /console`: the page.
pub(crate) async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

/// `GET /console/console.js`.
pub(crate) async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /console/console.css`.
pub(crate) async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

/// `GET /`: to the console.
pub(crate) async fn root() -> Redirect {
    Redirect::to("/console")
}
