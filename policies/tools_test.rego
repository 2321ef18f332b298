package baton.tools_test

import data.baton.tools

test_cost_may_query_assets if {
	tools.allow with input as {"tool": "query_assets", "role": "cost", "environment": "production", "arguments": {}}
	count(tools.deny_call) == 0 with input as {"tool": "query_assets", "role": "cost", "environment": "production", "arguments": {}}
}

test_cost_may_not_run_code if {
	not tools.allow with input as {"tool": "run_code", "role": "cost", "environment": "staging", "arguments": {"command": ["x"]}}
	count(tools.deny_call) == 1 with input as {"tool": "run_code", "role": "cost", "environment": "staging", "arguments": {"command": ["x"]}}
}

test_unknown_role_is_denied if {
	not tools.allow with input as {"tool": "read_file", "role": "nobody", "environment": "", "arguments": {}}
	count(tools.deny_call) == 1 with input as {"tool": "read_file", "role": "nobody", "environment": "", "arguments": {}}
}

test_production_writes_over_http_need_approval if {
	count(tools.call_requires_approval) == 1 with input as {"tool": "http_request", "role": "incident", "environment": "production", "arguments": {"method": "POST", "url": "http://x"}}
	count(tools.call_requires_approval) == 0 with input as {"tool": "http_request", "role": "incident", "environment": "production", "arguments": {"method": "GET", "url": "http://x"}}
}

test_writes_outside_production_run_without_a_human if {
	count(tools.call_requires_approval) == 0 with input as {"tool": "http_request", "role": "incident", "environment": "staging", "arguments": {"method": "PUT", "url": "http://x"}}
	tools.allow with input as {"tool": "http_request", "role": "incident", "environment": "staging", "arguments": {"method": "PUT", "url": "http://x"}}
}

test_a_delete_needs_a_human_everywhere if {
	count(tools.call_requires_approval) == 1 with input as {"tool": "http_request", "role": "cost", "environment": "staging", "arguments": {"method": "DELETE", "url": "http://x/snap"}}
	count(tools.call_requires_approval) == 1 with input as {"tool": "http_request", "role": "cost", "environment": "production", "arguments": {"method": "DELETE", "url": "http://x/snap"}}
	count(tools.call_requires_approval) == 0 with input as {"tool": "http_request", "role": "cost", "environment": "development", "arguments": {"method": "GET", "url": "http://x/snap"}}
}

test_a_denied_role_is_never_sent_to_a_human if {
	count(tools.deny_call) == 1 with input as {"tool": "http_request", "role": "drift", "environment": "production", "arguments": {"method": "POST", "url": "http://x"}}
}
