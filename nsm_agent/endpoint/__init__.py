"""The endpoint runtime: a network service endpoint in a pod's namespace."""
