"""The chain machinery every NetworkService server here is built from (agent and endpoint):
steps, the path rules, Begin, Monitor and the gRPC server over a chain."""
