//! Analyzing (K-AI-1): the LLM or the rules choose a workflow, which the
//! approval policy (K-AI-4) lets run or holds for a human. A storm
//! (K-GW-6) is escalated, never remediated target by target: the policy
//! decides whether its fan-out waits (the default policy always says so).

use kubernaut_api::k8s_openapi::jiff::Timestamp;
use kubernaut_api::{AnalysisStatus, ApprovalStatus, Phase};

use super::approval::{Approval, awaiting, gate};
use super::{Next, Stage, StageResult, Sup};
use crate::analysis::{self, Analyzed, Path};
use crate::metrics::ActorKind;
use crate::rules::RuleError;
use crate::supervisor::transitions::Reason;
use crate::supervisor::transitions::{Cond, Transition, Truth, set_condition};

pub struct Analysis;

impl Stage for Analysis {
    fn next(&self, sup: &mut Sup) -> Next {
        if let Some(storm) = sup.spec.storm.clone() {
            let workflow = sup
                .ctx
                .rules
                .iter()
                .find(|r| r.signal == storm.alert_name)
                .map(|r| r.workflow())
                .unwrap_or_default();
            let verdict = gate(sup, "rules", 1.0, &workflow);
            if !verdict.required {
                sup.approval = Some(Approval {
                    approved: true,
                    by: "the approval policy".into(),
                });
                return super::approval::AwaitingApproval.decide(sup);
            }
            let msg = format!(
                "{:?} storm of {} in namespace {}: escalated, approval required ({})",
                storm.kind,
                storm.alert_name,
                storm.namespace,
                verdict.reasons.join("; ")
            );
            let detail = serde_json::json!({ "message": msg, "alertName": storm.alert_name,
                "approve": sup.how_to_approve() });
            sup.escalate(Reason::StormEscalated, detail);
            let approval = awaiting(sup, verdict.reasons);
            let now = Timestamp::now();
            return Next::commit(move |s| {
                s.approval = Some(approval);
                set_condition(s, Cond::Analyzed, Truth::True, "Storm", now);
                Some(Transition::new(
                    Phase::AwaitingApproval,
                    Reason::StormEscalated,
                    msg,
                ))
            });
        }
        let (ctx, spec) = (sup.ctx.clone(), sup.spec.clone());
        let (processing, holder) = (sup.current().processing.clone(), sup.name.clone());
        Next::Run(
            ActorKind::analysis,
            Sup::work(move || {
                let (ctx, spec, processing, holder) = (
                    ctx.clone(),
                    spec.clone(),
                    processing.clone(),
                    holder.clone(),
                );
                async move {
                    let analyzed =
                        analysis::analyze(&ctx, &spec, processing.as_ref(), &holder).await;
                    StageResult::Analyzed(Box::new(analyzed))
                }
            }),
        )
    }

    fn done(&self, sup: &mut Sup, result: StageResult) -> Next {
        match result {
            StageResult::Analyzed(analyzed) => {
                sup.observe_stage("analysis");
                analyzed_to_next(sup, *analyzed)
            }
            // A storm the policy lets run without a human.
            targets @ StageResult::StormTargets(_) => {
                super::approval::AwaitingApproval.done(sup, targets)
            }
            _ => Next::Wait,
        }
    }
}

fn analyzed_to_next(sup: &mut Sup, analyzed: Analyzed) -> Next {
    let Analyzed {
        path,
        reason,
        decision,
        verdict,
        attempts,
        elapsed,
        ..
    } = analyzed;
    let now = Timestamp::now();
    let d = match decision {
        Ok(d) => d,
        Err(RuleError::NoRule(name)) => {
            let msg =
                format!("no rule answers signal {name}; nothing to do automatically ({reason})");
            return Next::commit(move |s| {
                set_condition(s, Cond::Analyzed, Truth::False, "NoMatchingRule", now);
                Some(Transition::new(Phase::Skipped, Reason::NoMatchingRule, msg))
            });
        }
        Err(e @ RuleError::MissingValue { .. }) => {
            return Next::Fail(Reason::RuleIncomplete, e.to_string());
        }
    };
    let confidence = verdict.as_ref().map(|v| v.confidence);
    let analysis = AnalysisStatus {
        decided_by: match path {
            Path::Llm => kubernaut_api::DecidedBy::Llm,
            Path::Rules => kubernaut_api::DecidedBy::Rules,
        },
        reason: reason.clone(),
        rule: d.rule.clone(),
        action: d.summary(),
        workflow: d.workflow.clone(),
        root_cause: verdict
            .as_ref()
            .map(|v| v.root_cause.clone())
            .unwrap_or_default(),
        confidence,
        rationale: verdict
            .as_ref()
            .map(|v| v.rationale.clone())
            .unwrap_or_default(),
        attempts,
        elapsed_millis: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        passed_over: d.passed_over.clone(),
        verify_query: d.verify_query.clone().unwrap_or_default(),
    };
    let decided = match path {
        Path::Llm => "LlmDecided",
        Path::Rules => "RuleMatched",
    };
    let recent = sup.ctx.holds.recently_remediated(
        &sup.ctx.settings.holds,
        &sup.key(),
        &sup.spec.target,
        &d.summary(),
        now,
    );
    if let Some((by, ago)) = recent {
        let t = &sup.spec.target;
        let msg = format!(
            "{} on {}/{} completed {}s ago (request {by}); skipped as recently remediated",
            d.summary(),
            t.kind,
            t.name,
            ago.as_secs()
        );
        return Next::commit(move |s| {
            s.analysis = Some(analysis);
            set_condition(s, Cond::Analyzed, Truth::True, "RecentlyRemediated", now);
            Some(Transition::new(
                Phase::Skipped,
                Reason::RecentlyRemediated,
                msg,
            ))
        });
    }
    let mut msg = match (path, confidence) {
        (Path::Llm, Some(c)) => format!("the LLM chose {} (confidence {c:.1})", d.summary()),
        _ => format!("rule {} chose {} ({reason})", d.rule, d.summary()),
    };
    if sup.ctx.settings.executor.dry_run_only {
        msg.push_str(" (global dry-run: server-side dry runs only)");
    }
    let policy = gate(sup, path.as_str(), confidence.unwrap_or(1.0), &d.workflow);
    // The decision as data, not only as the transition's message (K-AU-1).
    sup.audit_event(
        "decision",
        None,
        None,
        "Decided",
        "",
        serde_json::json!({
            "decidedBy": path.as_str(), "reason": &analysis.reason, "rule": &analysis.rule,
            "actions": &analysis.action, "workflow": &analysis.workflow,
            "rootCause": &analysis.root_cause, "rationale": &analysis.rationale,
            "confidence": analysis.confidence, "attempts": analysis.attempts,
            "policy": {"required": policy.required, "reasons": &policy.reasons, "error": &policy.error},
        }),
    );
    if policy.required {
        let approval = awaiting(sup, policy.reasons);
        let msg = format!("{msg}; approval required: {}", approval.reasons.join("; "));
        let detail =
            serde_json::json!({ "reasons": approval.reasons, "expiresAt": approval.expires_at });
        sup.audit_event("approval", None, None, "ApprovalRequested", "", detail);
        sup.notify_when_written(
            kubernaut_notify::Kind::ApprovalRequired,
            msg.clone(),
            serde_json::json!({"reasons": approval.reasons, "expiresAt": approval.expires_at,
                               "actions": analysis.action, "approve": sup.how_to_approve()}),
        );
        return Next::commit(move |s| {
            s.analysis = Some(analysis);
            s.approval = Some(approval);
            set_condition(s, Cond::Analyzed, Truth::True, decided, now);
            set_condition(s, Cond::Approved, Truth::Unknown, "ApprovalRequired", now);
            Some(Transition::new(
                Phase::AwaitingApproval,
                Reason::ApprovalRequired,
                msg,
            ))
        });
    }
    let approval = ApprovalStatus {
        required: false,
        reasons: policy.reasons,
        ..Default::default()
    };
    Next::commit(move |s| {
        s.analysis = Some(analysis);
        s.approval = Some(approval);
        set_condition(s, Cond::Analyzed, Truth::True, decided, now);
        Some(Transition::new(Phase::Executing, Reason::ActionChosen, msg))
    })
}
