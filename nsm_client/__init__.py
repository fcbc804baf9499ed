"""The client runtime and `nsmctl`: ask the node agent for connections, keep them (refresh, probe,
heal), close them; and run endpoints and pods' clients from the command line."""
