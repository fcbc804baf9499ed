"""Coverage-guided fuzzing (atheris, libFuzzer) of the parsers of outside input: the pod
annotation, addresses, namespace forms, CIDRs, SPIFFE IDs, path tokens and their metadata,
the registry's `path`. A parser answers or raises its own error; anything else is a crash.

    python -m tests.fuzz.atheris_parsers -runs=300000 -seed=1    # what CI runs (test_atheris.py)
    python -m tests.fuzz.atheris_parsers -max_total_time=3600    # a longer run, random
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from nsm_agent.netns.spec import parse_netns
    from nsm_common.errors import NsmError
    from nsm_common.identity.spiffe_id import IdPattern, SpiffeId, SpiffeIdError
    from nsm_common.registry_path import PathError, read_path
    from nsm_common.tokens import TokenError, claims, from_metadata, parse_expires
    from nsm_common.urls import UrlError, parse_address
    from nsm_endpoint.ipam import PointToPointPool
    from nsm_k8s.annotation import AnnotationError, parse


def one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    which = fdp.ConsumeIntInRange(0, 8)
    text = fdp.ConsumeUnicodeNoSurrogates(512)
    try:
        if which == 0:
            parse(text)
        elif which == 1:
            parse_address(text)
        elif which == 2:
            parse_netns({"inodeURL": text, "netnsInode": fdp.ConsumeUnicodeNoSurrogates(16)})
        elif which == 3:
            PointToPointPool(text)
        elif which == 4:
            SpiffeId.parse(text)
        elif which == 5:
            IdPattern.parse(text)
        elif which == 6:
            from_metadata(
                [("nsm-client-token", text), ("nsm-client-token-expires", fdp.ConsumeUnicodeNoSurrogates(40))]
            )
            parse_expires(text)
        elif which == 7:
            claims(text)
        else:
            read_path([("path", text)])
    except (AnnotationError, UrlError, NsmError, SpiffeIdError, TokenError, PathError):
        pass
    except ValueError as exc:  # ipaddress's own error, for a CIDR that is not one
        if which != 3:
            raise exc


def main() -> None:
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
