"""A mesh on one machine, in network namespaces: for tests, the demo and benchmarks.

Everything a Testbed creates carries its unique prefix and is removed by
`cleanup()`, also when the caller failed.
"""
