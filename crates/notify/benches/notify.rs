//! The notifier under a storm of escalations: N notifications (each a
//! different request) sent as fast as actors would, to a local webhook
//! receiver. Prints the delivery throughput, the time for `send` (what an
//! actor pays), and the process's peak resident memory.
//!
//! `cargo bench -p kubernaut-notify --bench notify -- 20000`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kubernaut_notify::{Kind, Metrics, Notification, Receiver, Route, Settings, Webhook};

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let settings = Settings {
        receivers: vec![Receiver {
            name: "bench".into(),
            webhook: Some(Webhook {
                url,
                secret_file: None,
            }),
            ..Default::default()
        }],
        routes: vec![Route {
            matchers: Default::default(),
            receiver: "bench".into(),
            continue_matching: false,
        }],
        queue: n as usize,
        ..Settings::default()
    };
    let before = peak_rss_kib();
    let (notifier, _task) = kubernaut_notify::start(&settings, Metrics::default(), |_| {}).unwrap();
    let started = Instant::now();
    let mut slowest_send = Duration::ZERO;
    for i in 0..n {
        let t = Instant::now();
        notifier.send(Notification {
            kind: Kind::Escalation,
            namespace: "storm".into(),
            name: format!("rr-{i}"),
            uid: format!("uid-{i}"),
            severity: "critical".into(),
            environment: "production".into(),
            summary: "StormEscalated: KubePodCrashLooping in namespace storm".into(),
            fingerprint: format!("fp-{i}"),
            detail: serde_json::json!({"reason": "StormEscalated", "targets": 40}),
        });
        slowest_send = slowest_send.max(t.elapsed());
    }
    let enqueued = started.elapsed();
    while received.load(Ordering::Relaxed) < n && started.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let got = received.load(Ordering::Relaxed);
    println!("notifier, {n} escalations to one local webhook receiver");
    println!("  send (an actor's cost): all {n} in {enqueued:?}, slowest {slowest_send:?}");
    println!(
        "  delivered {got} in {elapsed:?}: {:.0} notifications/s",
        got as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  peak resident memory {} KiB (before the notifier {} KiB)",
        peak_rss_kib(),
        before
    );
}
