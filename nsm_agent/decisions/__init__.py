"""The agent's pure decisions (endpoint selection, tunnel terms, wire plans, interface names):
no I/O, unit-tested without root."""
