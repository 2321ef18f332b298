# Tests of sandbox.rego: every rule both ways. Run them with
# `cargo nextest run -p baton-validation rego` (each `test_*` rule must evaluate to true).
package baton.sandbox_test

import data.baton.sandbox

# --- input builders -------------------------------------------------------------------------

# A code artifact whose sandbox run ended as `ended_by` with `exit_code`.
ran(name, exit_code, ended_by, network) := {
	"name": name,
	"media_type": "text/x-python",
	"sandbox_exit_code": exit_code,
	"sandbox_ended_by": ended_by,
	"sandbox_network": network,
}

passed(name) := ran(name, 0, "exited", false)

# An artifact that did not run in the sandbox.
not_run(name, media_type) := {
	"name": name,
	"media_type": media_type,
	"sandbox_exit_code": null,
	"sandbox_ended_by": null,
	"sandbox_network": null,
}

plan_input(role, artifacts) := {
	"task": {"task_id": "t-1", "tenant": "acme", "text": "write a python function to reverse a string", "submitted_by": "alice"},
	"spec": {
		"role": role,
		"task_type": "code_generation",
		"environment": "development",
		"risk": "low",
		"tools": ["run_code"],
		"target": "",
	},
	"plan": {
		"summary": "reverse a string",
		"total_assets": 0,
		"step_count": 0,
		"phases": [],
		"artifacts": artifacts,
		"agent": {"kind": "llm", "name": "codegen@1"},
	},
}

good := plan_input("codegen", [passed("reverse.py"), passed("test_reverse.py"), not_run("README.md", "text/markdown")])

no_run_msg := "code-generation plan has no code artifact that ran in the sandbox; run the code and its tests with run_code and attach the code with its sandbox report"

# --- a plan that did everything right -------------------------------------------------------

test_passing_sandbox_run_is_allowed_without_approval if {
	count(sandbox.deny) == 0 with input as good
	count(sandbox.require_approval) == 0 with input as good
}

test_plans_without_code_are_not_concerned if {
	plain := plan_input("drift", [not_run("report.md", "text/markdown")])
	count(sandbox.deny) == 0 with input as plain
	count(sandbox.deny) == 0 with input as plan_input("drift", [])
}

# --- code must run in the sandbox -----------------------------------------------------------

test_codegen_plan_without_any_sandbox_run_is_denied if {
	no_run_msg in sandbox.deny with input as plan_input("codegen", [])
	no_run_msg in sandbox.deny with input as plan_input("codegen", [not_run("notes.md", "text/markdown")])
}

test_code_artifact_in_another_role_still_needs_the_sandbox if {
	i := plan_input("drift", [not_run("fix.py", "text/x-python")])
	no_run_msg in sandbox.deny with input as i
	"code artifact \"fix.py\" did not run in the sandbox; run it and its tests with run_code and attach the sandbox report" in sandbox.deny with input as i
}

test_each_code_artifact_must_have_run if {
	i := plan_input("codegen", [passed("reverse.py"), not_run("helper.sh", "text/x-shellscript")])
	sandbox.deny == {"code artifact \"helper.sh\" did not run in the sandbox; run it and its tests with run_code and attach the sandbox report"} with input as i
	not no_run_msg in sandbox.deny with input as i
}

# --- tests must pass ------------------------------------------------------------------------

test_failing_tests_are_denied_with_the_exit_code if {
	i := plan_input("codegen", [ran("reverse.py", 1, "exited", false)])
	sandbox.deny == {"tests of \"reverse.py\" failed in the sandbox (exit code 1); fix the code until its tests exit 0"} with input as i
}

# --- no limit may be hit --------------------------------------------------------------------

test_each_limit_is_denied_and_named if {
	expected := {
		"timeout": "the wall-clock timeout",
		"memory": "the memory limit",
		"pids": "the process (pids) limit",
		"output": "the output cap",
	}
	every ended_by, text in expected {
		msg := sprintf("the sandbox run of \"reverse.py\" was ended by %s (exit code 137); make the code finish within the sandbox limits", [text])
		sandbox.deny == {msg} with input as plan_input("codegen", [ran("reverse.py", 137, ended_by, false)])
	}
}

test_a_limit_with_exit_code_zero_is_still_denied if {
	# A pids limit hit can end with the program exiting 0 after its forks failed.
	i := plan_input("codegen", [ran("reverse.py", 0, "pids", false)])
	count(sandbox.deny) == 1 with input as i
}

test_an_unknown_end_is_denied if {
	i := plan_input("codegen", [ran("reverse.py", 0, "unspecified", false)])
	sandbox.deny == {"the sandbox run of \"reverse.py\" was ended by an unknown end (unspecified) (exit code 0); make the code finish within the sandbox limits"} with input as i
}

# --- network needs approval -----------------------------------------------------------------

test_network_in_the_sandbox_needs_approval if {
	i := plan_input("codegen", [ran("fetch.py", 0, "exited", true)])
	sandbox.require_approval == {"the sandbox run of \"fetch.py\" had network access; a human must approve code that used the network"} with input as i
	count(sandbox.deny) == 0 with input as i
}

test_no_network_needs_no_approval if {
	count(sandbox.require_approval) == 0 with input as good
	count(sandbox.require_approval) == 0 with input as plan_input("codegen", [not_run("fix.py", "text/x-python")])
}
