"""`Keeper` as the README documented it before the client runtime got its own package.

Its home is `nsm_client.keeper`; this name stays so that code written against it keeps working.
"""

from nsm_client.keeper import Keeper

__all__ = ["Keeper"]
