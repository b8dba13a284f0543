"""latentserve: Python client of latentserve's public gRPC API.

    import latentserve
    with latentserve.Client("127.0.0.1:50051") as client:
        for chunk in client.generate("Hello", max_tokens=32):
            print(chunk.text, end="", flush=True)
"""
from latentserve.aio import AsyncClient, AsyncGenerateStream
from latentserve.client import Client, GenerateStream
from latentserve.errors import (Cancelled, DeadlineExceeded, InvalidArgument, LatentserveError, NotFound,
                                PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable, Unimplemented)
from latentserve.types import Chunk, Completion, Session, Timings, Usage

__all__ = [
    "AsyncClient", "AsyncGenerateStream", "Cancelled", "Chunk", "Client", "Completion", "DeadlineExceeded",
    "GenerateStream", "InvalidArgument", "LatentserveError", "NotFound", "PermissionDenied", "ResourceExhausted",
    "Session", "Timings", "Unauthenticated", "Unavailable", "Unimplemented", "Usage",
]
__version__ = "0.1.0"
