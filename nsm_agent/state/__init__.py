"""What the agent keeps in its state folder (the connection journal, WireGuard keys) and how it
carries on from there after a restart."""
