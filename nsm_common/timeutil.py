"""Conversions between protobuf Timestamps and wall-clock seconds."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp


def ts_seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def ts_from(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.seconds = int(seconds)
    ts.nanos = int((seconds - int(seconds)) * 1e9)
    return ts


def now() -> float:
    return time.time()
