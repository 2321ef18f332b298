# Tools: every tool call an agent makes is evaluated here before it runs. Deny by default: a
# call runs only when `allow` holds and no `deny_call` reason fires; a `call_requires_approval`
# reason sends it to a human: the agent's loop pauses durably, the call is listed by
# `baton pending` (kind tool_call) and decided with `baton approve/reject <task> --step <n>`.
# Only the call approved (same tool, same arguments hash) then runs; a denial or the timeout
# (`agents.tool_approval_timeout`) reaches the model as the call's error with its reason.
#
# Input (one tool call, built by the agent runner):
#   tool          the tool's name (`query_assets`)
#   side_effects  whether the tool changes anything outside the loop
#   arguments     the call's arguments (JSON, checked against the tool's schema already)
#   role          the agent's role (`cost`)
#   environment   the task's environment (`production`, `staging`, `development`, or empty)
#   task_type     the task's type
#   tenant        the task's tenant
#
# The rule names differ from validation's `deny`/`require_approval`, so the plan policies and
# this one can live in the same directory without one reading the other's input.
package baton.tools

read_only := {"query_assets", "get_asset_config", "get_golden_config", "read_file"}

# Which tools each role may call at all.
role_tools := {
	"drift": read_only,
	"patch": read_only | {"http_request"},
	"compliance": read_only,
	"incident": read_only | {"http_request"},
	"dr": read_only,
	"cost": read_only | {"http_request", "write_file"},
	"security": read_only,
	"image": read_only,
	"sop": read_only | {"write_file"},
	"adapter": read_only | {"http_request", "run_code", "write_file"},
	"codegen": {"read_file", "write_file", "run_code"},
	"assistant": read_only | {"run_code"},
}

default allow := false

allow if input.tool in role_tools[input.role]

deny_call contains msg if {
	not input.tool in object.get(role_tools, input.role, set())
	msg := sprintf("role %s may not call tool %s (policies/tools.rego)", [input.role, input.tool])
}

# A request that changes something is never sent from production by an agent on its own.
call_requires_approval contains msg if {
	input.tool == "http_request"
	input.arguments.method != "GET"
	input.environment == "production"
	msg := sprintf("an HTTP %s from a production task needs a human's approval", [input.arguments.method])
}

# Deleting something over HTTP needs a human in every environment.
call_requires_approval contains msg if {
	input.tool == "http_request"
	input.arguments.method == "DELETE"
	input.environment != "production"
	msg := sprintf("an HTTP DELETE (%s) needs a human's approval", [input.arguments.url])
}

# Code runs only in the sandbox, and never with a command longer than the sandbox allows.
deny_call contains "run_code needs a command" if {
	input.tool == "run_code"
	count(object.get(input.arguments, "command", [])) == 0
}
