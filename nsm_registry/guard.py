"""Store failures become UNAVAILABLE with a message, for unary and streaming calls alike."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import grpc

from nsm_registry.store import StoreUnavailable


def store_errors_unavailable(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a servicer method: a StoreUnavailable becomes UNAVAILABLE naming the cause."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: Any) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except StoreUnavailable as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"registry store unavailable: {exc}")

        return stream

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except StoreUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"registry store unavailable: {exc}")

    return unary
