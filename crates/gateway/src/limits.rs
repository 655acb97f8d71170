//! Bounds on what one signal may carry. Every label and annotation of a
//! signal, and its raw payload, is copied into a RemediationRequest (etcd
//! keeps it, every watch sends it) and into the LLM's prompt: a sender
//! must not be able to make either large, or to hide characters in them.
//! A signal over a bound is refused on its own (400, or its entry in a
//! 207 batch) with the bound it broke, counted by that name; control
//! characters are removed, and the raw payload is cut with a marker.

use kubernaut_api::Signal;
use serde::{Deserialize, Serialize};

use crate::SignalError;

/// The bounds; `gateway.limits` in the configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Limits {
    /// Labels per signal.
    pub max_labels: usize,
    /// Bytes of a label or annotation name.
    pub max_key_bytes: usize,
    /// Bytes of a label value.
    pub max_label_value_bytes: usize,
    /// Bytes of all annotation names and values together.
    pub max_annotation_bytes: usize,
    /// Bytes of the alert name and of the severity.
    pub max_name_bytes: usize,
    /// Bytes of the raw payload kept on the request; the rest is cut.
    pub max_raw_bytes: usize,
    /// Signals in one notification or batch; those past it are refused.
    pub max_signals: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_labels: 32,
            max_key_bytes: 128,
            max_label_value_bytes: 512,
            max_annotation_bytes: 16 * 1024,
            max_name_bytes: 256,
            max_raw_bytes: 16 * 1024,
            max_signals: 500,
        }
    }
}

/// What is appended to a raw payload that was cut.
pub const TRUNCATED: &str = "…[truncated]";

impl Limits {
    /// The signal within bounds, or the bound it breaks (its metric reason
    /// and a message for the sender).
    pub fn bound(&self, mut s: Signal) -> Result<Signal, SignalError> {
        let refuse =
            |reason: &'static str, detail: String| Err(SignalError::TooLarge(reason, detail));
        s.name = printable(&s.name);
        s.severity = printable(&s.severity);
        for (what, v) in [("alert name", &s.name), ("severity", &s.severity)] {
            if v.len() > self.max_name_bytes {
                return refuse(
                    "name_too_long",
                    format!("the {what} is longer than {} bytes", self.max_name_bytes),
                );
            }
        }
        if s.labels.len() > self.max_labels {
            return refuse(
                "too_many_labels",
                format!("{} labels; at most {}", s.labels.len(), self.max_labels),
            );
        }
        s.labels = std::mem::take(&mut s.labels)
            .into_iter()
            .map(|(k, v)| (printable(&k), printable(&v)))
            .collect();
        s.annotations = std::mem::take(&mut s.annotations)
            .into_iter()
            .map(|(k, v)| (printable(&k), multiline(&v)))
            .collect();
        if let Some(k) = s
            .labels
            .keys()
            .chain(s.annotations.keys())
            .find(|k| k.len() > self.max_key_bytes)
        {
            return refuse(
                "key_too_long",
                format!(
                    "the name {:?}… is longer than {} bytes",
                    prefix(k, 40),
                    self.max_key_bytes
                ),
            );
        }
        if let Some((k, _)) = s
            .labels
            .iter()
            .find(|(_, v)| v.len() > self.max_label_value_bytes)
        {
            return refuse(
                "label_too_long",
                format!(
                    "label {k:?} is longer than {} bytes",
                    self.max_label_value_bytes
                ),
            );
        }
        let annotation_bytes: usize = s.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
        if annotation_bytes > self.max_annotation_bytes {
            return refuse(
                "annotations_too_large",
                format!(
                    "annotations hold {annotation_bytes} bytes; at most {}",
                    self.max_annotation_bytes
                ),
            );
        }
        s.raw = multiline(&s.raw);
        if s.raw.len() > self.max_raw_bytes {
            let keep = prefix(&s.raw, self.max_raw_bytes).len();
            s.raw.truncate(keep);
            s.raw.push_str(TRUNCATED);
        }
        Ok(s)
    }

    /// Every signal bounded; those past `max_signals` refused.
    pub fn bound_all(
        &self,
        signals: Vec<Result<Signal, SignalError>>,
    ) -> Vec<Result<Signal, SignalError>> {
        let n = signals.len();
        signals
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                if i >= self.max_signals {
                    return Err(SignalError::TooLarge(
                        "too_many_signals",
                        format!(
                            "signal {} of {n}: at most {} are taken from one request",
                            i + 1,
                            self.max_signals
                        ),
                    ));
                }
                s.and_then(|s| self.bound(s))
            })
            .collect()
    }
}

/// The text without control characters.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// Annotations are prose: line breaks and tabs stay, other control
/// characters (NUL among them) go.
fn multiline(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .collect()
}

/// At most `max` bytes of `s`, cut on a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kubernaut_api::k8s_openapi::jiff::Timestamp;
    use kubernaut_api::{ObjectRef, SignalSource, SignalStatus};
    use proptest::prelude::*;

    use super::*;

    fn signal() -> Signal {
        Signal {
            source: SignalSource::Generic,
            status: SignalStatus::Firing,
            name: "HighErrorRate".into(),
            severity: "critical".into(),
            instance_key: "i".into(),
            resource: ObjectRef::new("Deployment", "shop", "web"),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            firing_time: Timestamp::UNIX_EPOCH,
            ended_time: None,
            received_time: Timestamp::UNIX_EPOCH,
            raw: "{}".into(),
        }
    }

    fn reason(r: Result<Signal, SignalError>) -> &'static str {
        match r {
            Err(SignalError::TooLarge(reason, _)) => reason,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn each_bound_refuses_with_its_own_reason() {
        let l = Limits::default();
        let mut s = signal();
        s.labels = (0..33).map(|i| (format!("l{i}"), "v".into())).collect();
        assert_eq!(reason(l.bound(s)), "too_many_labels");
        let mut s = signal();
        s.labels.insert("k".repeat(129), "v".into());
        assert_eq!(reason(l.bound(s)), "key_too_long");
        let mut s = signal();
        s.labels.insert("pod".into(), "v".repeat(513));
        assert_eq!(reason(l.bound(s)), "label_too_long");
        let mut s = signal();
        s.annotations
            .insert("description".into(), "d".repeat(16 * 1024));
        assert_eq!(reason(l.bound(s)), "annotations_too_large");
        let mut s = signal();
        s.name = "n".repeat(257);
        assert_eq!(reason(l.bound(s)), "name_too_long");
    }

    #[test]
    fn control_characters_go_and_a_long_raw_payload_is_cut_with_a_marker() {
        let l = Limits::default();
        let mut s = signal();
        s.severity = "crit\0ical\u{1b}[31m".into();
        s.labels.insert("po\0d".into(), "web\r\n-1".into());
        s.annotations
            .insert("summary".into(), "line one\nline two\0\u{7}".into());
        s.raw = "é".repeat(10_000);
        let s = l.bound(s).unwrap();
        assert_eq!(s.severity, "critical[31m");
        assert_eq!(s.labels.get("pod").map(String::as_str), Some("web-1"));
        assert_eq!(s.annotations["summary"], "line one\nline two");
        assert!(s.raw.ends_with(TRUNCATED));
        assert!(s.raw.len() <= l.max_raw_bytes + TRUNCATED.len());
    }

    #[test]
    fn signals_past_the_batch_bound_are_refused_one_by_one() {
        let l = Limits {
            max_signals: 2,
            ..Limits::default()
        };
        let out = l.bound_all(vec![Ok(signal()), Ok(signal()), Ok(signal())]);
        assert!(out[0].is_ok() && out[1].is_ok());
        assert_eq!(reason(out.into_iter().nth(2).unwrap()), "too_many_signals");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever a sender puts in, what is kept is within the bounds
        /// and holds no control character but line breaks and tabs.
        #[test]
        fn what_is_kept_is_bounded(
            labels in proptest::collection::btree_map(".{0,200}", ".{0,700}", 0..40),
            annotations in proptest::collection::btree_map(".{0,200}", ".{0,3000}", 0..12),
            name in ".{0,300}",
            raw in ".{0,20000}",
        ) {
            let l = Limits::default();
            let mut s = signal();
            s.labels = labels;
            s.annotations = annotations;
            s.name = name;
            s.raw = raw;
            if let Ok(s) = l.bound(s) {
                prop_assert!(s.labels.len() <= l.max_labels);
                prop_assert!(s.name.len() <= l.max_name_bytes);
                prop_assert!(s.raw.len() <= l.max_raw_bytes + TRUNCATED.len());
                let bytes: usize = s.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
                prop_assert!(bytes <= l.max_annotation_bytes);
                for (k, v) in &s.labels {
                    prop_assert!(k.len() <= l.max_key_bytes && v.len() <= l.max_label_value_bytes);
                    prop_assert!(!k.chars().chain(v.chars()).any(char::is_control));
                }
                for (k, v) in &s.annotations {
                    prop_assert!(!k.chars().any(char::is_control));
                    prop_assert!(!v.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
                }
            }
        }
    }
}
