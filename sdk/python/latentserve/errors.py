"""Errors of latentserve calls: one exception class per gRPC status code that matters to a caller.

Every exception keeps the gRPC code (``.code``, a ``grpc.StatusCode``), the server's message
(``.details``) and the trailing metadata (``.metadata``), so nothing the server said is lost.
"""
from typing import Dict, Optional, Sequence, Tuple, Type

import grpc


class LatentserveError(Exception):
    """A failed call. ``code``: grpc.StatusCode; ``details``: the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str, metadata: Sequence[Tuple[str, str]] = ()):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.metadata = tuple(metadata)

    @property
    def retryable(self) -> bool:
        """UNAVAILABLE and RESOURCE_EXHAUSTED: the same request may succeed later or elsewhere."""
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class InvalidArgument(LatentserveError):
    """The request is wrong (prompt too long, bad sampling values, ...): fix it, do not retry."""


class NotFound(LatentserveError):
    """Unknown model name."""


class ResourceExhausted(LatentserveError):
    """No decode worker has room, or this client has too many streams open: retry later."""


class Unavailable(LatentserveError):
    """No live workers, the router is draining, or the connection failed: retry (elsewhere)."""


class DeadlineExceeded(LatentserveError):
    """The call's deadline passed before it finished."""


class Unauthenticated(LatentserveError):
    """Missing or wrong bearer token."""


class PermissionDenied(LatentserveError):
    """The credential does not grant this call."""


class Cancelled(LatentserveError):
    """The call was cancelled (by this client)."""


class Unimplemented(LatentserveError):
    """The server cannot do this (e.g. text prompts on a model without a tokenizer)."""


_BY_CODE: Dict[grpc.StatusCode, Type[LatentserveError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}


def from_rpc_error(error: grpc.RpcError) -> LatentserveError:
    """The typed exception for a grpc.RpcError (sync or asyncio)."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = error.details() if callable(getattr(error, "details", None)) else str(error)
    metadata: Optional[Sequence] = None
    if callable(getattr(error, "trailing_metadata", None)):
        try:
            metadata = error.trailing_metadata()
        except Exception:  # an aio error whose call never reached the server
            metadata = None
    pairs = [(m[0], m[1]) if isinstance(m, tuple) else (m.key, m.value) for m in (metadata or ())]
    return _BY_CODE.get(code, LatentserveError)(code, details or "", pairs)
