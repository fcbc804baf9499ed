"""The agent's steps of the Request chain (the machinery and the shared steps are in
`nsm_common.chain`), each owning one concern and undoing it on Close, and what they hand
each other (`call.py`)."""
