//! GitHub webhooks: `POST /v1/webhooks/github/{job}/{source}`.
//!
//! Point a repository's or an organization's webhook (content type `application/json`,
//! events "Workflow runs", "Workflow jobs", "Check runs", "Check suites") at
//! `https://HOST/v1/webhooks/github/JOB/SOURCE`, where `SOURCE` is a push source of format
//! `github-actions` (see `amx_connectors::github` for how payloads become `workflow_events`).
//! GitHub's side follows "Webhook events and payloads" and "Validating webhook deliveries"
//! (docs.github.com):
//!
//! - With `[sources.webhook]` (a `secret`, or `secret_env` naming the server's environment
//!   variable that holds it), a delivery must carry `X-Hub-Signature-256: sha256=HEX`, the
//!   HMAC-SHA256 of its body under the secret, compared in constant time (`ring`); else 401.
//!   A server with users ([`crate::auth`]) accepts deliveries only for sources with a secret:
//!   GitHub cannot send a bearer token, so the signature is the delivery's authentication.
//!   There, every refusal before the signature verifies (no such job or source, a source of
//!   another format or without a secret, a missing or wrong signature) is the same 401 with
//!   the same message, so that a client without the secret cannot probe which jobs and
//!   sources exist; the server's log names the reason.
//! - `X-GitHub-Event` names the event: `ping` (sent when the webhook is created) is answered
//!   and ingests nothing; `workflow_run`, `workflow_job`, `check_run` and `check_suite` are
//!   ingested; any other event is answered 200 with `{"ignored": EVENT}` and ingests nothing
//!   (GitHub would mark a 4xx delivery failed and show it red in the webhook's log).
//! - `X-GitHub-Delivery` (a GUID, the same for a redelivery) is the push's idempotency key
//!   unless an `Idempotency-Key` header is given: a redelivered payload is applied once.
//!
//! The body goes in as one record (its JSON on one line), so the answer comes, as a push's,
//! once the payload is in the engine's input (durable, with a data directory); what cannot be
//! decoded is a row of `ingest_errors` and is counted in the answer.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use amx_cluster::job::SourceKind;
use amx_connectors::github;

use amx_cluster::protocol::JobId;

use crate::{ApiError, ApiResult, AppState, Body, api, body, idempotency_key, job_id};

/// The events whose payloads are ingested (`X-GitHub-Event`).
const INGESTED: [&str; 4] = github::KINDS;

/// The largest delivery taken, in bytes: GitHub caps webhook payloads at 25 MB ("Webhook
/// events and payloads"), and the route reads a body before it can check its signature, so no
/// more than that is read from anyone (also when `http.max_body_bytes` is larger).
pub(crate) const MAX_DELIVERY_BYTES: usize = 25 << 20;

/// Receives a GitHub webhook delivery (see the module documentation).
#[utoipa::path(post, path = "/v1/webhooks/github/{job}/{source}",
    params(("job" = u64, Path, description = "job id", example = 1),
        ("source" = String, Path, description = "push source of format `github-actions`", example = "github"),
        ("X-GitHub-Event" = String, Header, description = "the event: workflow_run, workflow_job, check_run and check_suite are ingested; ping and others are answered and ingest nothing"),
        ("X-Hub-Signature-256" = Option<String>, Header, description = "sha256=HEX: HMAC-SHA256 of the body under the source's [sources.webhook] secret (required when the source has one)"),
        ("X-GitHub-Delivery" = Option<String>, Header, description = "the delivery's GUID: the idempotency key (a redelivery is applied once) unless Idempotency-Key is given")),
    request_body(content = Option<String>, content_type = "application/json",
        description = "a GitHub webhook payload, as GitHub sends it with content type application/json",
        example = "{\"action\": \"completed\", \"workflow_run\": {\"id\": 1, \"status\": \"completed\", \"conclusion\": \"success\"}}"),
    responses((status = 200, description = "the payload is in the engine's input (an ingest report; `ignored` names an event that is not ingested, `zen` answers a ping)", body = amx_cluster::controller::IngestReport),
              (status = 400, description = "no X-GitHub-Event, a body that is not JSON, a source whose format is not github-actions (on a server without users), or a bad Idempotency-Key or X-GitHub-Delivery", body = api::ErrorBody),
              (status = 401, description = "no X-Hub-Signature-256, or one that does not verify under the source's secret; on a server with users, every refusal before the signature verifies (also no such job or source, a source of another format or without a secret), with one message", body = api::ErrorBody),
              (status = 403, description = "a foreign Host or Origin", body = api::ErrorBody),
              (status = 404, description = "no such job or push source (on a server without users)", body = api::ErrorBody),
              (status = 409, description = "the job was cancelled, or the delivery's key was used for a different body", body = api::ErrorBody),
              (status = 413, description = "a body over 25 MiB (GitHub's own cap on a payload), http.max_body_bytes or cluster.max_record_bytes", body = api::ErrorBody),
              (status = 415, description = "a content type other than application/json (set the webhook's content type to application/json)", body = api::ErrorBody),
              (status = 503, description = "the cluster has stopped, the data directory could not take the payload, or the secret's environment variable is not set (nothing was ingested; GitHub can redeliver)", body = api::ErrorBody)))]
pub(crate) async fn github(
    State(state): State<AppState>,
    Path((job, source)): Path<(String, String)>,
    headers: HeaderMap,
    raw: Body,
) -> ApiResult<Response> {
    let body = match raw {
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a delivery is at most {} bytes (GitHub caps webhook payloads at 25 MB; and http.max_body_bytes)",
                    MAX_DELIVERY_BYTES.min(crate::max_body_bytes())
                ),
            ));
        }
        raw => body(raw)?,
    };
    // The signature first: nothing about an unauthenticated delivery is looked at further. On
    // a server with users every refusal up to here reads the same, so that a client without
    // the secret learns nothing (whether the job or the source exists, its format, whether it
    // has a secret); the log says which it was.
    let job = match authenticate(&state, &job, &source, &headers, &body) {
        Ok(job) => job,
        Err(refusal) if state.auth.is_some() => {
            tracing::info!(%job, %source, reason = %refusal.message, "GitHub webhook delivery refused (401)");
            state.metrics.auth_refused(crate::metrics::Interface::Http, "unauthenticated");
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, UNAUTHENTICATED));
        }
        Err(refusal) => return Err(refusal),
    };
    let event = headers
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("no X-GitHub-Event header: is this a GitHub webhook delivery?"))?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "a webhook delivery of content type `{content_type}`: set the webhook's content type to application/json"
            ),
        ));
    }
    let payload: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}; nothing was ingested")))?;
    if event == "ping" {
        let zen = payload.get("zen").cloned().unwrap_or(serde_json::Value::Null);
        return Ok(axum::Json(serde_json::json!({ "zen": zen })).into_response());
    }
    if !INGESTED.contains(&event) {
        return Ok(axum::Json(serde_json::json!({ "ignored": event })).into_response());
    }
    // One record: the payload on one line (a pretty-printed body would be many).
    let line = payload.to_string();
    let limit = state.controller.max_record_bytes();
    if line.len() as u64 > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the payload takes {} bytes, over cluster.max_record_bytes ({limit})", line.len()),
        ));
    }
    let key =
        match idempotency_key(&headers)? {
            Some(key) => Some(key),
            None => match headers.get("x-github-delivery") {
                None => None,
                Some(v) => Some(v.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 255).ok_or_else(|| {
                    ApiError::bad_request("X-GitHub-Delivery must be 1 to 255 visible ASCII characters")
                })?),
            },
        };
    let report = state.controller.ingest_keyed(job, &source, &line, key).await?;
    Ok(axum::Json(report).into_response())
}

/// Checks `X-Hub-Signature-256: sha256=HEX` against the HMAC-SHA256 of `body` under `secret`
/// (constant time).
///
/// # Errors
/// 401 when the header is missing, malformed, or does not verify.
/// The one refusal of an unauthenticated delivery on a server with users.
const UNAUTHENTICATED: &str = "the delivery does not verify: this path must name a push source of format \
                               `github-actions` with a [sources.webhook] secret, and X-Hub-Signature-256 must be the \
                               body's HMAC-SHA256 under that secret (the server logs which part failed, at level info)";

/// The job of a delivery to `job`/`source` whose signature verifies under the source's secret
/// (or, on a server without users, to a source without one).
///
/// # Errors
/// 404 no such job or source; 400 a source that is not a `github-actions` push source; 401 a
/// missing or wrong signature, or a source without a secret on a server with users; 503 a
/// secret whose environment variable is not set.
fn authenticate(state: &AppState, job: &str, source: &str, headers: &HeaderMap, body: &[u8]) -> ApiResult<JobId> {
    let job = job_id(job)?;
    let info =
        state.controller.job(job).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job {job}")))?;
    let config = info
        .sources
        .iter()
        .find(|s| s.name == source)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("job {job} has no source `{source}`")))?;
    if config.kind != SourceKind::Push || config.format != github::FORMAT {
        return Err(ApiError::bad_request(format!(
            "source `{source}` of job {job} is not a push source of format `{}`: GitHub webhooks feed one",
            github::FORMAT
        )));
    }
    match &config.webhook {
        Some(webhook) => {
            let secret = webhook.resolve().map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
            verify(headers, secret.as_bytes(), body)?;
        }
        None if state.auth.is_some() => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!(
                    "this server authenticates requests and a webhook delivery carries no bearer token: give source \
                     `{source}` a [sources.webhook] secret, and the webhook the same secret"
                ),
            ));
        }
        None => {}
    }
    Ok(job)
}

fn verify(headers: &HeaderMap, secret: &[u8], body: &[u8]) -> ApiResult<()> {
    let refused = |why: &str| ApiError::new(StatusCode::UNAUTHORIZED, why.to_owned());
    let header = headers.get("x-hub-signature-256").ok_or_else(|| {
        refused("no X-Hub-Signature-256 header: the source has a secret, so deliveries must be signed")
    })?;
    let tag = header
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("sha256="))
        .and_then(|hex_tag| hex::decode(hex_tag).ok())
        .ok_or_else(|| refused("X-Hub-Signature-256 is not `sha256=` and hexadecimal digits"))?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, body, &tag)
        .map_err(|_| refused("X-Hub-Signature-256 does not match the body under the source's secret"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-hub-signature-256", signature.parse().expect("a header value"));
        headers
    }

    /// GitHub's own example ("Validating webhook deliveries", "Testing the webhook payload
    /// validation"): secret `It's a Secret to Everybody`, payload `Hello, World!`.
    #[test]
    fn githubs_documented_signature_verifies() {
        let secret = b"It's a Secret to Everybody";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify(&signed(good), secret, b"Hello, World!").is_ok());
        assert!(verify(&signed(good), secret, b"Hello, World?").is_err());
        assert!(verify(&signed(good), b"another secret", b"Hello, World!").is_err());
        // Upper-case hex digits are the same signature; other forms are refused.
        assert!(
            verify(&signed(&good.to_ascii_uppercase().replacen("SHA256", "sha256", 1)), secret, b"Hello, World!")
                .is_ok()
        );
        for bad in ["757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17", "sha1=757107", "sha256=zz"] {
            assert!(verify(&signed(bad), secret, b"Hello, World!").is_err(), "{bad}");
        }
        assert!(verify(&HeaderMap::new(), secret, b"Hello, World!").is_err());
    }
}
