"""Code shared by the agent, the registry, the endpoint and client runtimes."""
