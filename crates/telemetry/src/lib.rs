//! Logging initialisation and the admin HTTP surface (K-OP-1, K-OP-5):
//! `/healthz` (the process serves), `/readyz` (the controller has synced and
//! the gateway accepts), `/metrics` (Prometheus text format).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Initialises logging once; a second call is a no-op. `RUST_LOG` overrides `level`.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Readiness as a shared flag flipped by the wiring. Once
/// [`closed`](Readiness::close) (the process is shutting down) it stays
/// down, whatever a late "ready" from a start-up task says.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicU8>);

const NOT_READY: u8 = 0;
const READY: u8 = 1;
const CLOSED: u8 = 2;

impl Readiness {
    pub fn set(&self, ready: bool) {
        let (from, to) = if ready {
            (NOT_READY, READY)
        } else {
            (READY, NOT_READY)
        };
        let _ = self
            .0
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Down for good.
    pub fn close(&self) {
        self.0.store(CLOSED, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire) == READY
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    ready: Readiness,
}

pub fn admin_router(registry: Arc<Registry>, ready: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState { registry, ready })
}

async fn readyz(State(st): State<AdminState>) -> impl IntoResponse {
    if st.ready.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(st): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &st.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;
    use tower::ServiceExt;

    async fn get_path(app: Router, path: &str) -> (StatusCode, String) {
        let resp = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readiness_follows_the_flag_and_metrics_are_encoded() {
        let mut reg = Registry::with_prefix("kubernaut");
        let c = Counter::<u64>::default();
        reg.register("things", "Things", c.clone());
        c.inc();
        let ready = Readiness::default();
        let app = admin_router(Arc::new(reg), ready.clone());
        assert_eq!(get_path(app.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get_path(app.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        ready.set(true);
        assert_eq!(get_path(app.clone(), "/readyz").await.0, StatusCode::OK);
        let (s, body) = get_path(app, "/metrics").await;
        assert_eq!(s, StatusCode::OK);
        assert!(body.contains("kubernaut_things_total 1"), "{body}");
    }

    #[test]
    fn a_closed_readiness_stays_down_whatever_a_late_task_says() {
        let ready = Readiness::default();
        ready.set(true);
        ready.set(false);
        assert!(!ready.is_ready());
        ready.set(true);
        ready.close();
        assert!(!ready.is_ready());
        ready.set(true);
        assert!(!ready.is_ready(), "shutting down is for good");
    }
}
