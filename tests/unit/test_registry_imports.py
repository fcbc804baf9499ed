"""A registry on the memory store does not load the etcd client (nor pay for its import)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import asyncio, sys, tempfile
from nsm_registry.main import serve
from nsm_registry.settings import parse_settings

async def once(store):
    stop = asyncio.Event()
    stop.set()  # serve starts, then stops at once
    with tempfile.TemporaryDirectory() as folder:  # no network: a unix socket
        await serve(parse_settings(["--listen", f"unix://{folder}/registry.sock", "--store", store]), stop)

asyncio.run(once(sys.argv[1]))
print("aetcd" in sys.modules)
"""


def loaded_aetcd(store: str) -> bool:
    out = subprocess.run([sys.executable, "-c", PROBE, store], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1] == "True"


def test_the_memory_store_registry_never_imports_aetcd() -> None:
    assert not loaded_aetcd("memory")


def test_an_etcd_store_registry_does() -> None:  # the probe can tell
    assert loaded_aetcd("etcd://127.0.0.1:1")
