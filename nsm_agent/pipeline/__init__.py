"""The Request path: a chain of small steps, each owning one concern and undoing it on Close."""
