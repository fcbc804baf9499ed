# Service "secret" only over WireGuard between nodes: a Request whose first remote
# mechanism offered is not WIREGUARD (the one the serving agent would take) is denied.
# Give it to the agents with `--policy docs/policies` (or a ConfigMap mounted there).
package site

default valid = false

valid { input.operation != "networkservice.request" }
valid { input.network_service != "secret" }
valid { not remote_offered }
valid { remote_first == "WIREGUARD" }

remote_offered { input.mechanism_preferences[_].cls == "REMOTE" }

remote_first = t {
	remote := [m | m := input.mechanism_preferences[_]; m.cls == "REMOTE"]
	t := remote[0].type
}
