# Tests of production_safety.rego: every rule both ways. Run them with
# `cargo nextest run -p baton-validation rego` (each `test_*` rule must evaluate to true).
package baton.production_safety_test

import data.baton.production_safety

# --- input builders -------------------------------------------------------------------------

step(asset) := {"asset": asset, "action": "http", "has_rollback": true, "has_health_check": true}

step_without_rollback(asset) := {"asset": asset, "action": "http", "has_rollback": false, "has_health_check": true}

phase(index, name, kind, assets) := {
	"index": index,
	"name": name,
	"kind": kind,
	"assets": assets,
	"steps": [step(a) | some a in assets],
}

plan_input(environment, risk, phases, total) := {
	"task": {"task_id": "t-1", "tenant": "acme", "text": "fix drift", "submitted_by": "alice"},
	"spec": {
		"role": "drift",
		"task_type": "drift_remediation",
		"environment": environment,
		"risk": risk,
		"tools": [],
		"target": "web",
	},
	"plan": {
		"summary": "fix drift",
		"total_assets": total,
		"step_count": sum([count(p.steps) | some p in phases]),
		"phases": phases,
		"artifacts": [],
	},
}

# Canary of one, then waves of two: every phase at most 20% of 10 assets.
safe_phases := [
	phase(0, "canary", "canary", ["web-01"]),
	phase(1, "wave 1", "wave", ["web-02", "web-03"]),
	phase(2, "wave 2", "wave", ["web-04", "web-05"]),
]

safe_production := plan_input("production", "low", safe_phases, 10)

no_canary_phases := [phase(0, "wave 1", "wave", ["web-01", "web-02"])]

big_wave_phases := [
	phase(0, "canary", "canary", ["web-01"]),
	phase(1, "wave 1", "wave", ["web-02", "web-03", "web-04"]),
]

unknown_environment_msg := "unknown environment \"moon\": plans may target development, staging or production"

no_canary_msg := "production plans must start with a canary phase"

big_wave_msg := "phase \"wave 1\" holds 3 of 10 assets (30%); production phases may hold at most 20%"

high_risk_msg := "high-risk change in production needs a human approval"

# --- environment ----------------------------------------------------------------------------

test_unknown_environment_is_denied if {
	unknown_environment_msg in production_safety.deny with input as plan_input("moon", "low", safe_phases, 10)
}

test_known_environments_are_not_denied if {
	count(production_safety.deny) == 0 with input as plan_input("development", "low", safe_phases, 10)
	count(production_safety.deny) == 0 with input as plan_input("staging", "low", safe_phases, 10)
	count(production_safety.deny) == 0 with input as safe_production
}

# --- canary first ---------------------------------------------------------------------------

test_production_without_canary_is_denied if {
	no_canary_msg in production_safety.deny with input as plan_input("production", "low", no_canary_phases, 10)
}

test_production_with_canary_first_is_not_denied if {
	not no_canary_msg in production_safety.deny with input as safe_production
}

test_staging_without_canary_is_not_denied if {
	count(production_safety.deny) == 0 with input as plan_input("staging", "low", no_canary_phases, 10)
}

test_production_plan_without_steps_needs_no_canary if {
	count(production_safety.deny) == 0 with input as plan_input("production", "low", [], 10)
}

# --- phase size -----------------------------------------------------------------------------

test_production_phase_over_20_percent_is_denied if {
	big_wave_msg in production_safety.deny with input as plan_input("production", "low", big_wave_phases, 10)
}

test_production_phase_of_exactly_20_percent_is_not_denied if {
	count(production_safety.deny) == 0 with input as safe_production
}

test_single_asset_canary_is_exempt_from_the_limit if {
	# 1 of 3 assets is 33%, but a canary of one asset is the smallest phase possible.
	phases := [phase(0, "canary", "canary", ["web-01"])]
	count(production_safety.deny) == 0 with input as plan_input("production", "low", phases, 3)
}

test_larger_canary_is_held_to_the_limit if {
	phases := [phase(0, "canary", "canary", ["web-01", "web-02", "web-03"])]
	msg := "phase \"canary\" holds 3 of 10 assets (30%); production phases may hold at most 20%"
	msg in production_safety.deny with input as plan_input("production", "low", phases, 10)
}

test_phase_with_no_assets_in_scope_is_denied if {
	phases := [phase(0, "canary", "canary", ["web-01"]), phase(1, "wave 1", "wave", ["web-02"])]
	msg := "phase \"wave 1\" holds 1 of 0 assets (100%); production phases may hold at most 20%"
	msg in production_safety.deny with input as plan_input("production", "low", phases, 0)
}

test_staging_phase_over_20_percent_is_not_denied if {
	count(production_safety.deny) == 0 with input as plan_input("staging", "low", big_wave_phases, 10)
}

# --- risk -----------------------------------------------------------------------------------

test_high_risk_production_needs_approval if {
	high_risk_msg in production_safety.require_approval with input as plan_input("production", "high", safe_phases, 10)
}

test_critical_risk_production_needs_approval if {
	high_risk_msg in production_safety.require_approval with input as plan_input("production", "critical", safe_phases, 10)
}

test_low_and_medium_risk_production_need_no_approval if {
	count(production_safety.require_approval) == 0 with input as safe_production
	count(production_safety.require_approval) == 0 with input as plan_input("production", "medium", safe_phases, 10)
}

test_high_risk_staging_needs_no_approval if {
	count(production_safety.require_approval) == 0 with input as plan_input("staging", "high", safe_phases, 10)
}

# --- rollback -------------------------------------------------------------------------------

no_rollback_phases := [
	phase(0, "canary", "canary", ["web-01"]),
	{"index": 1, "name": "wave 1", "kind": "wave", "assets": ["web-02", "web-03"], "steps": [
		step_without_rollback("web-02"),
		step_without_rollback("web-03"),
	]},
]

test_production_steps_without_rollback_need_approval if {
	msg := "2 production step(s) have no rollback action (web-02, web-03); a human must accept that they cannot be undone"
	msg in production_safety.require_approval with input as plan_input("production", "low", no_rollback_phases, 10)
}

test_production_steps_with_rollback_need_no_approval if {
	count(production_safety.require_approval) == 0 with input as safe_production
}

test_staging_steps_without_rollback_need_no_approval if {
	count(production_safety.require_approval) == 0 with input as plan_input("staging", "low", no_rollback_phases, 10)
}
