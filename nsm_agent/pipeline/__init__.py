"""The agent's steps of the Request chain (the machinery and the shared steps are in
`nsm_common.chain`), each owning one concern and undoing it on Close. What a step hands later
steps is a record class defined beside it, put on the call by it alone."""
