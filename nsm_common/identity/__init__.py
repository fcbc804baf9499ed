"""Workload identities: SPIFFE IDs, the X.509 SVIDs that carry them, and the CA that
`nsmctl certs` makes for the demo, the tests and small sites."""
