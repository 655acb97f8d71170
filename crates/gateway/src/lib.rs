//! The signal gateway (K-GW): HTTP endpoints that turn source payloads into
//! [`Signal`](kubernaut_api::Signal)s and hand them to a
//! [`SignalIntake`](kubernaut_api::SignalIntake). The gateway knows nothing of
//! actors or storage; it answers each signal with 201 (created), 202
//! (duplicate), 200 (rejected as out of scope), 207 (a batch), 4xx for bad
//! input with an RFC 7807 body, and 503 when the signal must be sent again.
//! It also serves `POST /api/v1/remediations/{namespace}/{name}/approval`
//! (K-AI-4), handing the decision to an
//! [`ApprovalDesk`](kubernaut_api::ApprovalDesk), and the same decision
//! from Slack's buttons at `POST /api/v1/slack/interactions` ([`slack`]).

pub mod alertmanager;
pub mod cloudwatch;
mod error;
pub mod generic;
pub mod kubernetes_event;
pub mod limits;
pub mod metrics;
pub mod problem;
pub mod protect;
pub mod slack;
pub mod sns;
pub mod sns_trust;
#[cfg(any(test, feature = "test-pki"))]
pub mod test_pki;

pub use error::ConfigError;
pub use ipnet::IpNet;
pub use limits::Limits;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use kubernaut_api::k8s_openapi::jiff::Timestamp;
use kubernaut_api::{
    ApprovalDesk, ApprovalError, IngestOutcome, IntakeError, RejectReason, Signal, SignalIntake,
    SignalStatus,
};
use serde::{Deserialize, Serialize};

pub use cloudwatch::{CloudWatch, CloudWatchConfig, TargetRule};
pub use metrics::Metrics;
use problem::Problem;
pub use protect::{Protection, ProtectionConfig, Rate, ReviewPolicy};

/// K-GW-7: the largest body accepted.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Seconds a 503 asks the sender to wait before re-sending.
const RETRY_AFTER_SECS: u32 = 5;
/// Alerts of one notification handled at once: a large group is not handled
/// one API round trip after another, nor all at once against the API server.
const BATCH_CONCURRENCY: usize = 8;

#[derive(Clone)]
pub struct GatewayState {
    pub intake: Arc<dyn SignalIntake>,
    pub metrics: Metrics,
    pub protection: Arc<Protection>,
    pub cloudwatch: Arc<CloudWatch>,
    /// Approvals through HTTP; `None`: the endpoint answers 503.
    pub approvals: Option<Arc<dyn ApprovalDesk>>,
    /// Approvals from Slack's buttons; `None`: that endpoint answers 503.
    pub slack: Option<Arc<slack::SlackApprovals>>,
    /// What one signal, and one request, may carry.
    pub limits: Limits,
}

/// The signal endpoints. Serve with
/// `into_make_service_with_connect_info::<SocketAddr>()` so that the
/// per-source-IP rate limit sees the peer.
pub fn router(state: GatewayState) -> Router {
    let guard = |admission| {
        axum::middleware::from_fn_with_state(
            (state.protection.clone(), state.metrics.clone(), admission),
            protect::middleware,
        )
    };
    let bearer = Router::new()
        .route("/api/v1/signals/alertmanager", post(alertmanager))
        .route("/api/v1/signals/kubernetes-event", post(kubernetes_event))
        .route("/api/v1/signals/generic", post(generic))
        .route_layer(guard(protect::Admission::Bearer));
    let signed = Router::new()
        .route("/api/v1/signals/cloudwatch", post(cloudwatch_sns))
        .route_layer(guard(protect::Admission::Signed));
    // Approvals authenticate and authorise through the API server
    // (TokenReview, SubjectAccessReview), not the signal senders' list;
    // the per-source-IP limit still bounds token guessing.
    let approvals = Router::new()
        .route(
            "/api/v1/remediations/{namespace}/{name}/approval",
            post(approval),
        )
        .route("/api/v1/slack/interactions", post(slack_interaction))
        .route_layer(guard(protect::Admission::Signed));
    bearer
        .merge(signed)
        .merge(approvals)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalBody {
    /// `approved` or `rejected`.
    decision: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApprovalAnswer {
    namespace: String,
    name: String,
    decision: String,
    decided_by: String,
}

/// K-AI-4: approve or reject a request waiting for approval, as the
/// caller's Kubernetes identity.
async fn approval(
    State(state): State<GatewayState>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(desk) = state.approvals.clone() else {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "approvals over HTTP are not configured here; annotate the request instead",
        )
        .into_response();
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => return Problem::bad_request(e.body_text()).into_response(),
    };
    let decision: ApprovalBody = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            return Problem::bad_request(format!(
                "the body must be {{\"decision\": \"approved\" | \"rejected\"}}: {e}"
            ))
            .into_response();
        }
    };
    let approved = match decision.decision.as_str() {
        "approved" => true,
        "rejected" => false,
        other => {
            return Problem::bad_request(format!(
                "decision must be \"approved\" or \"rejected\", not {other:?}"
            ))
            .into_response();
        }
    };
    let Some(token) = protect::bearer_token(&headers) else {
        return approval_problem(ApprovalError::Unauthenticated);
    };
    match desk.decide(token, &namespace, &name, approved).await {
        Ok(by) => {
            tracing::info!(%namespace, %name, decision = %decision.decision, %by, "approval recorded");
            Json(ApprovalAnswer {
                namespace,
                name,
                decision: decision.decision,
                decided_by: by,
            })
            .into_response()
        }
        Err(e) => approval_problem(e),
    }
}

/// An Approve or Reject button pressed in Slack ([`slack`]).
async fn slack_interaction(
    State(state): State<GatewayState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (Some(desk), Some(slack)) = (state.approvals.clone(), state.slack.clone()) else {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "Slack approvals are not configured here (gateway.slack)",
        )
        .into_response();
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => return Problem::bad_request(e.body_text()).into_response(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let click = match slack.verify(&headers, &body, now) {
        Ok(c) => c,
        Err(e @ slack::SlackError::Malformed(_)) => {
            return Problem::bad_request(e.to_string()).into_response();
        }
        Err(e @ slack::SlackError::NotAnApprover(_)) => {
            tracing::warn!(error = %e, "a Slack approval from someone who is not an approver");
            return Problem::new(StatusCode::FORBIDDEN, "Forbidden", e.to_string()).into_response();
        }
        Err(e) => {
            tracing::warn!(error = %e, "a Slack callback refused");
            return Problem::new(StatusCode::UNAUTHORIZED, "Unauthorized", e.to_string())
                .into_response();
        }
    };
    let decision = if click.approved {
        "approved"
    } else {
        "rejected"
    };
    match desk
        .decide_as(&click.user, &click.namespace, &click.name, click.approved)
        .await
    {
        Ok(by) => {
            tracing::info!(namespace = %click.namespace, name = %click.name, decision, %by, slack_user = %click.slack_user, "approval recorded from Slack");
            // Slack shows this text to the person who clicked.
            Json(serde_json::json!({
                "response_type": "ephemeral", "replace_original": false,
                "text": format!("{decision} {}/{} as {by}", click.namespace, click.name),
            }))
            .into_response()
        }
        Err(e) => approval_problem(e),
    }
}

fn approval_problem(e: ApprovalError) -> Response {
    let (status, title) = match &e {
        ApprovalError::Unauthenticated => (StatusCode::UNAUTHORIZED, "Unauthorized"),
        ApprovalError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
        ApprovalError::NotFound(_) => (StatusCode::NOT_FOUND, "Not Found"),
        ApprovalError::NotAwaiting(_) => (StatusCode::CONFLICT, "Conflict"),
        ApprovalError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
    };
    // A 5xx says nothing of the internals (the log has the cause); a 4xx
    // tells the caller what to fix.
    let detail = if status.is_server_error() {
        tracing::warn!(error = %e, "approval failed on our side");
        "the approval could not be recorded now; try again".to_string()
    } else {
        e.to_string()
    };
    let mut r = Problem::new(status, title, detail).into_response();
    if let ApprovalError::Unavailable(_) = e {
        r.headers_mut().insert(
            header::RETRY_AFTER,
            axum::http::HeaderValue::from(RETRY_AFTER_SECS),
        );
    }
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

async fn method_not_allowed() -> Response {
    let mut r = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method Not Allowed",
        "signal endpoints accept POST only",
    )
    .into_response();
    r.headers_mut()
        .insert(header::ALLOW, axum::http::HeaderValue::from_static("POST"));
    r
}

async fn not_found(uri: axum::http::Uri) -> Response {
    Problem::new(
        StatusCode::NOT_FOUND,
        "Not Found",
        format!(
            "{} is not an endpoint; signals go to /api/v1/signals/{{alertmanager,cloudwatch,kubernetes-event,generic}}",
            uri.path()
        ),
    )
    .into_response()
}

/// The answer for one signal of a payload. `result` is created, duplicate,
/// storm (aggregated into a storm request, K-GW-6), rejected, resolved or
/// invalid.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SignalResult {
    pub status: u16,
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurrence_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl SignalResult {
    fn empty(status: u16, result: &'static str) -> Self {
        SignalResult {
            status,
            result,
            request: None,
            namespace: None,
            fingerprint: None,
            occurrence_count: None,
            reason: None,
            detail: None,
        }
    }

    fn from_outcome(o: IngestOutcome) -> Self {
        match o {
            IngestOutcome::Created {
                request,
                namespace,
                fingerprint,
            } => SignalResult {
                status: 201,
                result: "created",
                request: Some(request),
                namespace: Some(namespace),
                fingerprint: Some(fingerprint),
                occurrence_count: Some(1),
                ..Self::empty(201, "created")
            },
            IngestOutcome::Duplicate {
                request,
                namespace,
                fingerprint,
                occurrence_count,
            } => SignalResult {
                status: 202,
                result: "duplicate",
                request: Some(request),
                namespace: Some(namespace),
                fingerprint: Some(fingerprint),
                occurrence_count: Some(occurrence_count),
                ..Self::empty(202, "duplicate")
            },
            IngestOutcome::Rejected { reason, detail } => SignalResult {
                status: 200,
                result: "rejected",
                reason: Some(reason.as_str()),
                detail: Some(detail),
                ..Self::empty(200, "rejected")
            },
            IngestOutcome::Storm {
                request,
                namespace,
                created,
                total_signals,
            } => {
                let status = if created { 201 } else { 202 };
                SignalResult {
                    request: Some(request),
                    namespace: Some(namespace),
                    occurrence_count: Some(total_signals),
                    detail: Some(
                        "aggregated into the storm request of this alert name and namespace".into(),
                    ),
                    ..Self::empty(status, "storm")
                }
            }
            IngestOutcome::Resolved { request } => SignalResult {
                detail: Some(match &request {
                    Some(_) => "the resolution was recorded on its request".to_string(),
                    None => "no request of this signal is known; nothing to record".to_string(),
                }),
                namespace: request.as_ref().map(|k| k.namespace.clone()),
                request: request.map(|k| k.name),
                ..Self::empty(200, "resolved")
            },
        }
    }

    fn invalid(detail: String) -> Self {
        SignalResult {
            detail: Some(detail),
            ..Self::empty(400, "invalid")
        }
    }
}

fn reject(reason: RejectReason, detail: &str) -> IngestOutcome {
    IngestOutcome::Rejected {
        reason,
        detail: detail.to_string(),
    }
}

#[derive(Serialize)]
struct BatchResponse {
    results: Vec<SignalResult>,
}

/// The Content-Type header without parameters, checked against `allowed`
/// (415 otherwise).
pub(crate) fn check_content_type(headers: &HeaderMap, allowed: &[&str]) -> Result<(), Problem> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if allowed.iter().any(|a| mime.eq_ignore_ascii_case(a)) {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type",
            format!("expected Content-Type {}, got {ct:?}", allowed.join(" or ")),
        ))
    }
}

fn body_problem(rejection: BytesRejection) -> Problem {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(
            status,
            "Payload Too Large",
            format!("the body exceeds {MAX_BODY_BYTES} bytes"),
        )
    } else {
        Problem::new(status, "Bad Request", rejection.body_text())
    }
}

/// Why one signal of a payload could not be handed to the intake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalError {
    /// Malformed: the caller sent something we cannot read (400).
    Invalid(String),
    /// Well-formed, but names no Kubernetes resource we know (200, rejected).
    NoTarget(String),
    /// Well-formed and deliberately not acted on (200, rejected).
    Ignored(RejectReason, String),
    /// Over one of the gateway's [`Limits`] (400), named by the bound.
    TooLarge(&'static str, String),
}

/// The kinds a signal may name as its target (the owner resolution in the
/// cluster crate follows them), and whether each is namespaced.
const TARGET_KINDS: &[(&str, bool)] = &[
    ("Pod", true),
    ("Deployment", true),
    ("ReplicaSet", true),
    ("StatefulSet", true),
    ("DaemonSet", true),
    ("Job", true),
    ("Node", false),
];

/// The canonical spelling of a target kind and whether it is namespaced, or
/// `None` for kinds Kubernaut does not remediate.
pub(crate) fn target_kind(kind: &str) -> Option<(&'static str, bool)> {
    TARGET_KINDS.iter().copied().find(|(k, _)| *k == kind)
}

/// What a source adapter makes of a body: one result per signal.
pub type Parsed = Vec<Result<Signal, SignalError>>;

async fn alertmanager(
    State(st): State<GatewayState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let metrics = st.metrics.clone();
    handle(&st, "alertmanager", &headers, body, |b| {
        let payload = alertmanager::parse(b).map_err(|e| format!("invalid Alertmanager payload: {e}"))?;
        payload.validate()?;
        if payload.truncated_alerts > 0 {
            metrics.truncated.inc_by(payload.truncated_alerts);
            tracing::warn!(truncated = payload.truncated_alerts, group = %payload.group_key, "Alertmanager truncated alerts of a group");
        }
        Ok(payload.signals(Timestamp::now()))
    })
    .await
}

async fn kubernetes_event(
    State(st): State<GatewayState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(&st, "kubernetes-event", &headers, body, |b| {
        let event = kubernetes_event::parse(b)?;
        Ok(vec![kubernetes_event::signal(&event, Timestamp::now())])
    })
    .await
}

async fn generic(
    State(st): State<GatewayState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(&st, "generic", &headers, body, |b| {
        generic::parse(b, Timestamp::now())
    })
    .await
}

async fn cloudwatch_sns(
    State(st): State<GatewayState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let resp = cloudwatch::handle(&st, &headers, body).await;
    observe(&st, "cloudwatch", started, &resp);
    resp
}

/// Request latency per source and answer.
fn observe(st: &GatewayState, source: &'static str, started: Instant, resp: &Response) {
    st.metrics
        .latency
        .get_or_create(&metrics::EndpointLabels {
            endpoint: source,
            code: resp.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
}

/// The common path of every JSON source: content type, body, the source's
/// parser, then each signal through the intake; timed per source.
async fn handle(
    st: &GatewayState,
    source: &'static str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    parse: impl FnOnce(&[u8]) -> Result<Parsed, String>,
) -> Response {
    let started = Instant::now();
    let resp = match check_content_type(headers, &["application/json"])
        .and_then(|()| body.map_err(body_problem))
        .and_then(|b| parse(&b).map_err(Problem::bad_request))
    {
        Ok(signals) => handle_signals(st, source, signals).await,
        Err(problem) => {
            st.metrics.count(source, "invalid", "");
            problem.into_response()
        }
    };
    observe(st, source, started, &resp);
    resp
}

async fn handle_signals(st: &GatewayState, source: &'static str, signals: Parsed) -> Response {
    if signals.is_empty() {
        st.metrics.count(source, "invalid", "");
        return Problem::bad_request("the payload holds no signal").into_response();
    }
    let handled = futures::stream::iter(st.limits.bound_all(signals))
        .map(|parsed| async move {
            st.metrics.count(source, "received", "");
            match parsed {
                Err(SignalError::Invalid(detail)) => {
                    st.metrics.count(source, "invalid", "");
                    Ok(SignalResult::invalid(detail))
                }
                Err(SignalError::TooLarge(bound, detail)) => {
                    st.metrics.count(source, "invalid", bound);
                    Ok(SignalResult::invalid(detail))
                }
                Err(SignalError::NoTarget(detail)) => {
                    let reason = RejectReason::NoTarget;
                    st.metrics.count(source, "rejected", reason.as_str());
                    Ok(SignalResult::from_outcome(reject(reason, &detail)))
                }
                Err(SignalError::Ignored(reason, detail)) => {
                    st.metrics.count(source, "rejected", reason.as_str());
                    Ok(SignalResult::from_outcome(reject(reason, &detail)))
                }
                Ok(signal) => process(st, source, signal).await,
            }
        })
        .buffered(BATCH_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    // Nothing may be lost: if any alert could not be handled, the whole
    // notification is refused so that Alertmanager re-sends it; alerts
    // already handled then count as duplicates of their request.
    let results = match handled.into_iter().collect::<Result<Vec<_>, _>>() {
        Ok(r) => r,
        Err(_) => return Problem::unavailable(RETRY_AFTER_SECS).into_response(),
    };
    respond(results)
}

/// One result answers with its own code; several with 207.
fn respond(mut results: Vec<SignalResult>) -> Response {
    if results.len() == 1 {
        let r = results.remove(0);
        if r.status == 400 {
            return Problem::bad_request(r.detail.unwrap_or_default()).into_response();
        }
        let code = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
        return (code, Json(r)).into_response();
    }
    (StatusCode::MULTI_STATUS, Json(BatchResponse { results })).into_response()
}

/// One parsed signal through the intake, counted. A resolution never starts
/// a remediation (K-GW-2): it is recorded on its request.
async fn process(
    st: &GatewayState,
    source: &'static str,
    signal: Signal,
) -> Result<SignalResult, IntakeError> {
    let outcome = if signal.status == SignalStatus::Resolved {
        st.intake.resolve(signal).await
    } else {
        st.intake.ingest(signal).await
    };
    match outcome {
        Ok(o) => {
            let (outcome, reason) = match &o {
                IngestOutcome::Created { .. } => ("created", ""),
                IngestOutcome::Duplicate { .. } => ("duplicate", ""),
                IngestOutcome::Rejected { reason, .. } => ("rejected", reason.as_str()),
                IngestOutcome::Resolved { .. } => ("resolved", ""),
                IngestOutcome::Storm { .. } => ("storm_aggregated", ""),
            };
            st.metrics.count(source, outcome, reason);
            Ok(SignalResult::from_outcome(o))
        }
        Err(IntakeError::Invalid(detail)) => {
            st.metrics.count(source, "invalid", "");
            tracing::warn!(%detail, source, "the API server refused the request of a signal");
            Ok(SignalResult::invalid(detail))
        }
        Err(e) => {
            st.metrics.count(source, "error", e.metric_label());
            tracing::warn!(error = %e, source, "signal intake failed; asking the sender to retry");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz;
