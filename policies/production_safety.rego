# Production safety: where a plan may go, and how carefully it must roll out there.
#
# Input: the policy input document described in the baton-validation crate docs
# (`input.task`, `input.spec`, `input.plan`). Validation collects `deny` (the plan is
# rejected) and `require_approval` (a human must approve it) from every `baton.*` package.
package baton.production_safety

# Environments a plan may target.
environments := {"development", "staging", "production"}

# Largest share of `plan.total_assets` one production phase may hold, in percent.
max_phase_percent := 20

# Risks that need a human in production.
gated_risks := {"high", "critical"}

production if input.spec.environment == "production"

deny contains msg if {
	not input.spec.environment in environments
	msg := sprintf(
		"unknown environment \"%s\": plans may target development, staging or production",
		[input.spec.environment],
	)
}

# A canary proves the change on one small group before the rest; in production it comes first.
deny contains "production plans must start with a canary phase" if {
	production
	input.plan.step_count > 0
	input.plan.phases[0].kind != "canary"
}

# No production phase may hold more than `max_phase_percent` of the assets in scope, so one
# bad phase cannot take out more than that share of the fleet.
deny contains msg if {
	production
	some phase in input.plan.phases
	not single_asset_canary(phase)
	held := count(phase.assets)
	percent := phase_percent(held, input.plan.total_assets)
	percent > max_phase_percent
	msg := sprintf(
		"phase \"%s\" holds %d of %d assets (%d%%); production phases may hold at most %d%%",
		[phase.name, held, input.plan.total_assets, round(percent), max_phase_percent],
	)
}

# A canary of exactly one asset is the smallest phase there is, so it is allowed even when one
# asset is more than `max_phase_percent` of a small fleet (1 of 3 servers is 33%).
single_asset_canary(phase) if {
	phase.kind == "canary"
	count(phase.assets) == 1
}

# Share of `total` held by `held`, in percent. A plan that claims no assets in scope
# (total 0) but holds some counts as 100%.
phase_percent(held, total) := (held * 100) / total if total > 0

phase_percent(held, total) := 100 if {
	total <= 0
	held > 0
}

require_approval contains "high-risk change in production needs a human approval" if {
	production
	input.spec.risk in gated_risks
}

# A step without a rollback cannot be undone automatically if its phase fails.
require_approval contains msg if {
	production
	missing := [step.asset |
		some phase in input.plan.phases
		some step in phase.steps
		not step.has_rollback
	]
	count(missing) > 0
	msg := sprintf(
		"%d production step(s) have no rollback action (%s); a human must accept that they cannot be undone",
		[count(missing), concat(", ", missing)],
	)
}
