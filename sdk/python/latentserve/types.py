"""What a latentserve call returns, as plain dataclasses (no protobuf types needed)."""
from dataclasses import dataclass, field
from typing import List, Optional

from latentserve.v1 import generate_pb2 as pb

_FINISH = {
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_STOP_TOKEN: "stop_token",
    pb.FINISH_REASON_STOP_STRING: "stop_string",
}


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_bytes_transferred: int = 0  # latent rows + KDA state moved from prefill to decode
    cached_tokens: int = 0  # prompt tokens resumed from a cached prefix (a session's document)


@dataclass
class Timings:
    ttft_ms: float = 0.0
    decode_tokens_per_s: float = 0.0
    prefill_ms: float = 0.0
    transfer_tail_ms: float = 0.0


@dataclass
class Chunk:
    """One event of a generate() stream. ``kind``: "progress", "tokens" or "finished"."""

    kind: str
    text: str = ""  # "tokens": the text these tokens complete (may be "" mid-character)
    token_ids: List[int] = field(default_factory=list)
    tokens_done: int = 0   # "progress": prompt tokens whose cache is computed
    tokens_total: int = 0  # "progress": prompt tokens in total
    finish_reason: Optional[str] = None  # "finished": "length", "stop_token" or "stop_string"
    usage: Optional[Usage] = None        # "finished"
    timings: Optional[Timings] = None    # "finished"
    request_id: str = ""                 # "finished"


@dataclass
class Completion:
    """A whole answer (chat(), complete())."""

    text: str
    token_ids: List[int]
    finish_reason: str
    usage: Usage
    timings: Timings
    request_id: str


def chunk_from_proto(event: pb.GenerateResponse) -> Chunk:
    kind = event.WhichOneof("event")
    if kind == "progress":
        return Chunk("progress", tokens_done=event.progress.tokens_done, tokens_total=event.progress.tokens_total)
    if kind == "tokens":
        return Chunk("tokens", text=event.tokens.text, token_ids=list(event.tokens.token_ids))
    finished = event.finished
    return Chunk("finished", finish_reason=_FINISH.get(finished.reason, "unspecified"),
                 usage=Usage(finished.usage.prompt_tokens, finished.usage.completion_tokens,
                             finished.usage.cache_bytes_transferred, finished.usage.cached_tokens),
                 timings=Timings(finished.timings.ttft_ms, finished.timings.decode_tokens_per_s,
                                 finished.timings.prefill_ms, finished.timings.transfer_tail_ms),
                 request_id=finished.request_id)


@dataclass
class Session:
    """A document session (create_session(), list_sessions())."""

    session_id: str          # "sess-" + 128 random bits: pass as session_id= to ask() / generate()
    document_tokens: int
    pinned: bool
    created_unix_ms: int
    last_used_unix_ms: int
    expires_unix_ms: int     # the earlier of its TTL and idle limits, unless used before
    decode_worker: str       # the decode worker holding the document
    requests: int            # Generate requests served so far
    reprefills: int          # times the document was prefilled again after its worker was lost
    prefill_ms: float = 0.0  # create_session(): the document's prefill


def session_from_proto(info: pb.SessionInfo, prefill_ms: float = 0.0) -> Session:
    return Session(info.session_id, info.document_tokens, info.pinned, info.created_unix_ms, info.last_used_unix_ms,
                   info.expires_unix_ms, info.decode_worker, info.requests, info.reprefills, prefill_ms)


class Collector:
    """Folds chunks into a Completion."""

    def __init__(self):
        self.text, self.token_ids, self.finished = [], [], None

    def add(self, chunk: Chunk) -> None:
        if chunk.kind == "tokens":
            self.text.append(chunk.text)
            self.token_ids.extend(chunk.token_ids)
        elif chunk.kind == "finished":
            self.finished = chunk

    def result(self) -> Completion:
        f = self.finished
        if f is None:
            raise RuntimeError("the stream ended without a finished event")
        return Completion("".join(self.text), self.token_ids, f.finish_reason, f.usage, f.timings, f.request_id)
