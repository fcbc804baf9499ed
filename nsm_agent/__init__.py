"""The node agent: serves pods, brokers endpoints through the registry, builds wires with netlink."""
