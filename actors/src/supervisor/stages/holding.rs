//! Pending and Blocked: a request starts unless a routing hold (K-RR-8)
//! keeps it Blocked until its time passes or its target frees.

use kubernaut_api::Phase;
use kubernaut_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kubernaut_api::k8s_openapi::jiff::Timestamp;

use super::{Next, Stage, Sup};
use crate::holds::{Asking, HoldReason};
use crate::supervisor::transitions::Reason;
use crate::supervisor::transitions::{Cond, Transition, Truth, set_condition};

pub struct Holding;

impl Stage for Holding {
    fn next(&self, sup: &mut Sup) -> Next {
        let pending = sup.phase() == Phase::Pending;
        if pending {
            sup.audit_request(Phase::Pending);
        }
        let now = Timestamp::now();
        // A storm waits for a human anyway; it holds no single target.
        let key = sup.key();
        let hold = sup.spec.storm.is_none().then(|| {
            let me = Asking {
                key: &key,
                created: sup.created,
                target: &sup.spec.target,
                times_held: sup.times_held,
            };
            sup.ctx
                .holds
                .before_start(&sup.ctx.settings.holds, &me, now)
        });
        let Some(hold) = hold.flatten() else {
            let reason = if pending {
                Reason::Started
            } else {
                Reason::HoldReleased
            };
            return Next::commit(move |s| {
                if !pending {
                    s.blocked_until = None;
                    set_condition(s, Cond::Held, Truth::False, reason.as_str(), now);
                }
                Some(Transition::new(Phase::Processing, reason, ""))
            });
        };
        // Still held, and the recorded time to look again has not come:
        // the timer armed with it will.
        if !pending && sup.status.blocked_until.as_ref().is_some_and(|t| t.0 > now) {
            return Next::Wait;
        }
        if hold.reason == HoldReason::TargetBusy {
            sup.times_held += 1;
        }
        if pending && hold.reason == HoldReason::ConsecutiveFailures {
            let detail = serde_json::json!({ "message": hold.message, "blockedUntil": hold.until.to_string() });
            sup.escalate(hold.reason.into(), detail);
        }
        tracing::info!(reason = hold.reason.as_str(), until = %hold.until, message = %hold.message, "routing hold");
        sup.recheck_at(hold.until);
        let (reason, message, until) = (Reason::from(hold.reason), hold.message, Time(hold.until));
        Next::commit(move |s| {
            s.blocked_until = Some(until);
            s.message = Some(message.clone());
            set_condition(s, Cond::Held, Truth::True, reason.as_str(), now);
            pending.then(|| Transition::new(Phase::Blocked, reason, message))
        })
    }
}
