# A refresh or Close of a connection this hop holds comes from the identity that made it:
# the caller's SPIFFE ID is the one recorded for the connection (upstream keeps the same
# map, spiffe_id_connection_map, for Monitor).
package nsm

default valid = false

valid {
	not input.connection_owner
}

valid {
	input.connection_owner == input.caller.spiffe_id
}
