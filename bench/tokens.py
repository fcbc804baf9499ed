"""Target 11: what path tokens and policies cost a Request, in process (no kernel, no gRPC):
the server steps that place, sign and check tokens (PresentedToken, SignSegment, Authorize
over the default policies and a site policy) plus the caller's own signing, against the
same chain without them; and a profile of where that time goes.

End to end (identities on: mutual TLS, tokens, policies; against `--insecure` and bare
pyroute2) is the `tls` part, in the same run.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path

from nsm_api.connection_pb2 import Connection, PathSegment
from nsm_api.connection_pb2 import Path as ConnPath
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_common.chain.authorize import Authorize
from nsm_common.chain.begin import Begin
from nsm_common.chain.caller import Caller
from nsm_common.chain.chain import Call, Chain, Step
from nsm_common.chain.path_tokens import OutgoingTokens, PresentedToken, SignSegment
from nsm_common.chain.update_path import UpdatePath
from nsm_common.identity import issue
from nsm_common.identity.folder import IdentityFolder
from nsm_common.identity.spiffe_id import Roles, SpiffeId
from nsm_common.policy.policies import Policies
from nsm_common.timeutil import ts_from
from nsm_common.tokens import Presented, from_metadata

TD = "bench.test"
CLIENT = f"spiffe://{TD}/ns/default/sa/web"
SERVER = f"spiffe://{TD}/node/server"
SITE = 'package site\n\ndefault valid = false\n\nvalid { input.network_service == "bench" }\n'


async def _run(chain: Chain, tokens: OutgoingTokens | None, caller_pem: str, n: int) -> list[float]:
    times = []
    for i in range(n):
        seg = PathSegment(name="client", id=f"c-{i}", expires=ts_from(time.time() + 600))
        conn = Connection(id=seg.id, network_service="bench", path=ConnPath(index=0, path_segments=[seg]))
        t = time.perf_counter()
        call = Call()
        if tokens is not None:
            presented = from_metadata(tokens.sign_for(conn, SERVER))
            assert presented is not None
            call.put(Caller(SpiffeId.parse(CLIENT), caller_pem, Presented(presented.token, presented.expires),
                            local=False))  # fmt: skip
        await chain.request(NetworkServiceRequest(connection=conn), call)
        times.append(time.perf_counter() - t)
    return times


def run_all(n: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp)
        issue.init_ca(pki / "ca", TD)
        issue.issue(pki / "ca", CLIENT, pki / "client")
        issue.issue(pki / "ca", SERVER, pki / "server")
        (pki / "site").mkdir()
        (pki / "site" / "site.rego").write_text(SITE)
        server = IdentityFolder(pki / "server", server=True)
        client = OutgoingTokens(IdentityFolder(pki / "client", server=False))
        pem = (pki / "client" / "tls.crt").read_text()
        roles = Roles(TD)

        def on() -> Chain:
            begin = Begin()
            authorize = Authorize(Policies([pki / "site"]), server, lambda: roles, "server")
            begin.may_touch = authorize.may_touch
            steps: list[Step] = [PresentedToken(), UpdatePath("server", 600, 600), SignSegment(server, "server"),
                                 authorize, begin]  # fmt: skip
            return Chain(steps)

        def off() -> Chain:
            return Chain([UpdatePath("server", 600, 600), Begin()])

        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(_run(on(), client, pem, 20))  # warm: compiled, imported
            with_tokens = loop.run_until_complete(_run(on(), client, pem, n))
            without = loop.run_until_complete(_run(off(), None, pem, n))
            profile = cProfile.Profile()
            chain = on()
            profile.enable()
            loop.run_until_complete(_run(chain, client, pem, n))
            profile.disable()
        finally:
            loop.close()
    return {"on": with_tokens, "off": without, "profile": _top(profile, n)}


def _top(profile: cProfile.Profile, n: int, rows: int = 10) -> list[dict[str, object]]:
    """The functions that take the most time (their own and what they call), ms per Request."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    wanted = ("tokens.py", "engine.py", "policies.py", "path_tokens.py", "authorize.py", "documents.py",
              "api_jwt.py", "api_jws.py", "algorithms.py", "interpreter.py")  # fmt: skip
    found = []
    for (file, line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if file.endswith(wanted):
            found.append({"function": f"{Path(file).name}:{line} {name}", "ms_per_request": ct * 1000 / n})
    found.sort(key=lambda r: -float(r["ms_per_request"]))  # type: ignore[arg-type]
    return found[:rows]
