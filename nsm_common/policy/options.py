"""The policy setting the agent and the registry share: a site's own Rego files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel

from nsm_common.policy.engine import PolicyError
from nsm_common.policy.policies import Policies
from nsm_common.settings import Option


class PolicySettings(BaseModel):
    """Mixed into a program's settings model."""

    policy: Annotated[
        list[Path],
        Option("NSM_POLICY", "site policy: a .rego file or a folder of them, reloaded on change",
               metavar="PATH", repeat=True),
    ] = []  # fmt: skip

    def policies(self, program: str, *, tokens: bool) -> Policies:
        """The defaults and the site's files; a file that does not compile stops the program
        with the engine's error. TOKENS: the component has an identity (path tokens exist)."""
        try:
            return Policies(self.policy, tokens=tokens)
        except PolicyError as exc:
            raise SystemExit(f"{program}: --policy (env NSM_POLICY): {exc}") from exc
