"""The registry: which network services exist and which endpoints serve them."""
