"""The generated code in nsm_api/ must match proto/ (run scripts/gen-proto)."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULES = ["connectioncontext", "connection", "networkservice", "registry"]

# Lines that name the generator's version, not the contract.
VERSION_LINE = re.compile(
    r"(Protobuf Python Version|GRPC_GENERATED_VERSION|ValidateProtobufRuntimeVersion|^\s*\d+,\s*$|^\s*'',\s*$)"
)


def _normal(text: str) -> list[str]:
    return [line for line in text.splitlines() if not VERSION_LINE.search(line)]


def test_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_proto.py"), str(tmp_path)], check=True, capture_output=True
    )
    fresh = sorted(p.name for p in (tmp_path / "nsm_api").iterdir())
    committed = sorted(p.name for p in (REPO / "nsm_api").iterdir() if p.is_file())
    assert fresh == committed, "nsm_api/ holds other files than the generator makes: run scripts/gen-proto"
    for name in fresh:
        new = (tmp_path / "nsm_api" / name).read_text()
        old = (REPO / "nsm_api" / name).read_text()
        assert _normal(new) == _normal(old), f"nsm_api/{name} is stale: run scripts/gen-proto"


def test_descriptors_equal_a_fresh_compile(tmp_path: Path) -> None:
    """Byte-for-byte: the serialized descriptors in the modules equal what protoc makes now."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    out = tmp_path / "set.pb"
    include = Path(protoc.__file__).parent / "_proto"
    sources = [f"nsm_api/{m}.proto" for m in MODULES]
    rc = protoc.main(["protoc", f"-I{REPO / 'proto'}", f"-I{include}", f"--descriptor_set_out={out}", *sources])
    assert rc == 0
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    by_name = {f.name: f for f in fds.file}
    for m in MODULES:
        module = importlib.import_module(f"nsm_api.{m}_pb2")
        ours = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        fresh = by_name[f"nsm_api/{m}.proto"]
        _drop_json_names(fresh)  # protoc adds them to descriptor sets, not to generated modules
        _drop_json_names(ours)
        assert ours == fresh, f"nsm_api/{m}_pb2.py is stale"


def _drop_json_names(file: "descriptor_pb2.FileDescriptorProto") -> None:  # type: ignore[name-defined]  # noqa: F821
    def walk(msg) -> None:  # type: ignore[no-untyped-def]
        for field in msg.field:
            field.ClearField("json_name")
        for nested in msg.nested_type:
            walk(nested)

    for msg in file.message_type:
        walk(msg)
