"""WireGuard between nodes: keys, and the device that carries the tunnels."""
