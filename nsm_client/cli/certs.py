"""`nsmctl certs`: a CA and identities for the demo, the tests and small sites.

nsmctl certs init --dir D --trust-domain T         a CA: D/ca.crt, D/ca.key
nsmctl certs issue --ca D --id SPIFFE_ID --out O   an identity: O/tls.crt, tls.key, ca.crt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nsm_common.identity import issue
from nsm_common.identity.spiffe_id import SpiffeIdError


class CertsError(Exception):
    """What `nsmctl certs` could not do, naming the flag at fault."""


def cmd_init(args: argparse.Namespace) -> int:
    if args.days <= 0:
        raise CertsError("--days: must be a positive number of days")
    try:
        cert = issue.init_ca(Path(args.dir), args.trust_domain, days=args.days)
    except SpiffeIdError as exc:
        raise CertsError(f"--trust-domain: {exc}") from None
    except issue.IssueError as exc:
        raise CertsError(f"--dir: {exc}") from None
    _show(args, {"ca": str(Path(args.dir) / issue.CA_CERT), "trust_domain": args.trust_domain,
                 "not_after": cert.not_valid_after_utc.isoformat()})  # fmt: skip
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    if args.days <= 0:
        raise CertsError("--days: must be a positive number of days")
    try:
        cert = issue.issue(Path(args.ca), args.id, Path(args.out), days=args.days, dns_names=args.dns)
    except (SpiffeIdError, issue.OtherTrustDomain) as exc:
        raise CertsError(f"--id: {exc}") from None
    except issue.IssueError as exc:
        raise CertsError(f"--ca: {exc}") from None
    except ValueError as exc:  # cryptography refusing a DNS name
        raise CertsError(f"--dns: {exc}") from None
    _show(args, {"id": args.id, "out": args.out, "not_after": cert.not_valid_after_utc.isoformat()})
    return 0


def _show(args: argparse.Namespace, what: dict[str, Any]) -> None:
    if args.output == "json":
        print(json.dumps(what))
    else:
        print("  ".join(f"{k}={v}" for k, v in what.items()))


def add_parser(sub: Any) -> None:
    """`certs init` and `certs issue` under nsmctl's subcommands."""
    certs = sub.add_parser("certs", help="make a CA and identities (demo, tests, small sites)")
    verbs = certs.add_subparsers(dest="certs_command", required=True)
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", choices=("table", "json"), default="table")
    i = verbs.add_parser("init", parents=[output], help="make a CA for a trust domain")
    i.add_argument("--dir", required=True, help="folder for ca.crt and ca.key (must not hold a CA yet)")
    i.add_argument("--trust-domain", required=True, help="e.g. example.org")
    i.add_argument("--days", type=int, default=issue.DEFAULT_CA_DAYS, help="validity in days")
    i.set_defaults(func=cmd_init)
    s = verbs.add_parser("issue", parents=[output], help="make an identity (an X.509 SVID) signed by the CA")
    s.add_argument("--ca", required=True, help="the CA's folder, as certs init made it")
    s.add_argument("--id", required=True, help="its SPIFFE ID, e.g. spiffe://example.org/node/node1")
    s.add_argument("--out", required=True, help="folder for tls.crt, tls.key and ca.crt")
    s.add_argument("--dns", action="append", help="a DNS SAN, repeatable (default: derived from --id)")
    s.add_argument("--days", type=int, default=issue.DEFAULT_DAYS, help="validity in days")
    s.set_defaults(func=cmd_issue)
