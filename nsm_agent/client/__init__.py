"""Kept for those who import the client runtime from here: it lives in `nsm_client` now."""
