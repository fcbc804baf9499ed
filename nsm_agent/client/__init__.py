"""The client runtime: ask the node agent for a connection, close it."""
