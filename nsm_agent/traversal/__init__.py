"""Through NAT without port forwards: learning this node's WireGuard mapping from a reflector,
punching holes toward nodes of other domains, and relaying where no direct path forms."""
