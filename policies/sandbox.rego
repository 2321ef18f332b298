# Sandbox: generated code is trusted only after it ran in the sandbox and its tests passed there.
#
# Input: the policy input document described in the baton-validation crate docs. Each entry of
# `input.plan.artifacts` has `name`, `media_type` and, when it ran in the sandbox,
# `sandbox_exit_code`, `sandbox_ended_by` (`exited`, or the limit that ended it: `timeout`,
# `memory`, `pids`, `output`) and `sandbox_network`; all three are null when it did not run.
package baton.sandbox

# Media types of code artifacts (an artifact with a sandbox run is code whatever its type).
code_media_types := {
	"text/x-python",
	"text/x-script.python",
	"application/x-python",
	"text/x-shellscript",
	"application/x-sh",
}

# What each limit means, for messages.
limits := {
	"timeout": "the wall-clock timeout",
	"memory": "the memory limit",
	"pids": "the process (pids) limit",
	"output": "the output cap",
}

ran_in_sandbox(artifact) if artifact.sandbox_exit_code != null

code(artifact) if artifact.media_type in code_media_types

code(artifact) if ran_in_sandbox(artifact)

# A code-generation plan: made for the `codegen` role, or carrying code.
codegen if input.spec.role == "codegen"

codegen if {
	some artifact in input.plan.artifacts
	code(artifact)
}

deny contains "code-generation plan has no code artifact that ran in the sandbox; run the code and its tests with run_code and attach the code with its sandbox report" if {
	codegen
	not any_ran
}

any_ran if {
	some artifact in input.plan.artifacts
	ran_in_sandbox(artifact)
}

deny contains msg if {
	codegen
	some artifact in input.plan.artifacts
	code(artifact)
	not ran_in_sandbox(artifact)
	msg := sprintf(
		"code artifact \"%s\" did not run in the sandbox; run it and its tests with run_code and attach the sandbox report",
		[artifact.name],
	)
}

deny contains msg if {
	some artifact in input.plan.artifacts
	ran_in_sandbox(artifact)
	artifact.sandbox_ended_by == "exited"
	artifact.sandbox_exit_code != 0
	msg := sprintf(
		"tests of \"%s\" failed in the sandbox (exit code %d); fix the code until its tests exit 0",
		[artifact.name, artifact.sandbox_exit_code],
	)
}

deny contains msg if {
	some artifact in input.plan.artifacts
	ran_in_sandbox(artifact)
	artifact.sandbox_ended_by != "exited"
	msg := sprintf(
		"the sandbox run of \"%s\" was ended by %s (exit code %d); make the code finish within the sandbox limits",
		[artifact.name, limit_text(artifact.sandbox_ended_by), artifact.sandbox_exit_code],
	)
}

limit_text(ended_by) := limits[ended_by]

limit_text(ended_by) := sprintf("an unknown end (%s)", [ended_by]) if not limits[ended_by]

# Network in the sandbox is off unless a policy decision granted it; code that used it needs a
# human to look at what it reached.
require_approval contains msg if {
	some artifact in input.plan.artifacts
	artifact.sandbox_network == true
	msg := sprintf(
		"the sandbox run of \"%s\" had network access; a human must approve code that used the network",
		[artifact.name],
	)
}
