# Which workloads may ask for which services, by the Kubernetes namespace in their SPIFFE ID
# (spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/ACCOUNT by default; see --workload-ids).
# `input.client` is who asked first (the path's first token, when an agent relays the
# Request; else the caller itself), `input.caller` the hop that called this one; a local
# caller (a pod's own socket) has `input.caller.local`.
package site

default valid = false

allowed := {
	"web": {"prod", "staging"},
	"db": {"prod"},
}

valid { input.operation != "networkservice.request" }
valid { not allowed[input.network_service] }  # services nobody listed: as the defaults say
valid { allowed[input.network_service][input.client.namespace] }
valid { allowed[input.network_service][input.caller.namespace] }
