"""Errors that carry a gRPC status code and a message a person understands."""

from __future__ import annotations

import grpc


class NsmError(Exception):
    """Raised anywhere in a request path; servers turn it into a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def invalid(message: str) -> NsmError:
    return NsmError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> NsmError:
    return NsmError(grpc.StatusCode.NOT_FOUND, message)


def from_rpc_error(exc: grpc.aio.AioRpcError | grpc.RpcError, where: str) -> NsmError:
    """Wrap an error returned by a downstream call, keeping its code."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return NsmError(code, f"{where}: {details}")
