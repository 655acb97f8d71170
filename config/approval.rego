# Kubernaut's default approval policy (K-AI-4), evaluated in-process with
# regorus before a request executes. A request waits in AwaitingApproval
# when `required` is true; `reasons` say why, in the status and the audit.
# Any evaluation error, or a policy that leaves `required` undefined, also
# means approval required.
#
# input:
#   environment   the target namespace's kubernaut.io/environment label
#                 ("unknown" when it has none)
#   priority      P0 … P3
#   decidedBy     "llm" or "rules"
#   confidence    0 … 1 (the LLM's; rule decisions are the operators' own: 1)
#   target        {kind, namespace, name}
#   actions       [{name, risk, destructive}]   risk: none | low | medium | high;
#                 destructive: it can take capacity, an object or a pod away
#   storm         true for a storm request (its actions run on every target)
#   signal        {name, severity, source}
package kubernaut.approval

import rego.v1

default required := false

required if count(reasons) > 0

# Only a namespace labelled as one of these is not production: an
# unlabelled or unknown environment is treated as production.
non_production := {"development", "dev", "staging", "test", "qa", "sandbox"}

production if not input.environment in non_production

reasons contains "production change with confidence below 0.8" if {
	production
	input.confidence < 0.8
}

# The model's confidence comes from text others wrote (alert labels,
# annotations, events): it never waives approval for a change that takes
# something away, in any environment.
reasons contains sprintf("destructive action %s chosen by the LLM", [a.name]) if {
	input.decidedBy == "llm"
	some a in input.actions
	a.destructive
}

reasons contains sprintf("%s target", [input.target.kind]) if {
	input.target.kind in {"Node", "StatefulSet"}
}

reasons contains "storm" if input.storm

reasons contains sprintf("high-risk action %s", [a.name]) if {
	some a in input.actions
	a.risk == "high"
}
