"""The agent's registry-facing side: its client and watched copy of the registry, the registry
services it proxies for pods on its socket, and where the endpoints registered through it listen."""
