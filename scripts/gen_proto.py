"""Generate the Python wire code in nsm_api/ from proto/nsm_api/*.proto.

Usage: python scripts/gen_proto.py [OUTPUT_ROOT]

OUTPUT_ROOT defaults to the repository root; the staleness test generates into a
temporary folder and compares.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
PACKAGE = "nsm_api"


def generate(out_root: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) with the gRPC and mypy plugins; return the written files."""
    out_pkg = out_root / PACKAGE
    out_pkg.mkdir(parents=True, exist_ok=True)
    sources = sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    venv_bin = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy={venv_bin / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={venv_bin / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *[str(s.relative_to(PROTO_ROOT)) for s in sources],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    init = out_pkg / "__init__.py"
    init.write_text('"""Generated from proto/nsm_api by scripts/gen_proto.py; do not edit."""\n')
    return sorted(p for p in out_pkg.iterdir() if p.is_file())


def main() -> None:
    out_root = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO
    if out_root == REPO:
        shutil.rmtree(REPO / PACKAGE, ignore_errors=True)
    for path in generate(out_root):
        print(path)


if __name__ == "__main__":
    main()
