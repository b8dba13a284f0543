"""Synchronous client of latentserve.v1.Generation."""
from typing import Iterable, Iterator, List, Optional, Sequence, Union

import grpc

from latentserve import _request
from latentserve.errors import from_rpc_error
from latentserve.types import Chunk, Collector, Completion, Session, chunk_from_proto, session_from_proto
from latentserve.v1 import generate_pb2 as pb
from latentserve.v1 import generate_pb2_grpc as pb_grpc


class GenerateStream:
    """Iterator of Chunks for one generate() call; cancel() (or close()) stops the request."""

    def __init__(self, call):
        self._call = call

    def __iter__(self) -> Iterator[Chunk]:
        return self

    def __next__(self) -> Chunk:
        try:
            return chunk_from_proto(next(self._call))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def cancel(self) -> None:
        """Stops the request: the router, prefill and decode workers drop it."""
        self._call.cancel()

    close = cancel

    def __enter__(self) -> "GenerateStream":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()


class Client:
    """A connection to a latentserve router (or `serve`).

    target: "host:port". tls: use TLS (system roots unless root_certificates is given).
    root_certificates / private_key / certificate_chain: PEM bytes or file paths (the last two
    for mutual TLS). token: bearer token (--auth-token-file on the server). timeout: default
    deadline in seconds for every call (None: no deadline; each method takes its own too).
    """

    def __init__(self, target: str, *, tls: bool = False, root_certificates: Union[None, bytes, str] = None,
                 private_key: Union[None, bytes, str] = None, certificate_chain: Union[None, bytes, str] = None,
                 token: Optional[str] = None, timeout: Optional[float] = None, options: Sequence = ()):
        credentials = _request.channel_credentials(tls, _request.read_bytes(root_certificates),
                                                   _request.read_bytes(private_key),
                                                   _request.read_bytes(certificate_chain))
        if token and credentials is None:
            raise ValueError("a bearer token needs TLS (the server refuses tokens in plaintext)")
        self._channel = (grpc.secure_channel(target, credentials, options=list(options)) if credentials
                         else grpc.insecure_channel(target, options=list(options)))
        self._stub = pb_grpc.GenerationStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _deadline(self, timeout: Optional[float]) -> Optional[float]:
        return self._timeout if timeout is None else timeout

    def generate(self, prompt: Optional[str] = None, *, prompt_tokens: Optional[Sequence[int]] = None,
                 messages: Optional[Iterable[_request.Message]] = None, max_tokens: int = 256,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 0.0, min_p: float = 0.0, seed: int = 0,
                 stop: Union[None, str, Sequence[str]] = None, stop_token_ids: Optional[Sequence[int]] = None,
                 ignore_eos: bool = False, model: str = "", request_id: str = "", session_id: str = "",
                 timeout: Optional[float] = None) -> GenerateStream:
        """Streams one prompt: progress chunks while prefilling, token chunks, then "finished".

        Exactly one of prompt (text), prompt_tokens (ids) or messages (chat turns).
        temperature 0 is greedy. session_id: the prompt is a suffix of that session's document
        (text without BOS, chat turns as a continuation); see create_session().
        """
        request = _request.generate_request(prompt, prompt_tokens, messages, max_tokens=max_tokens,
                                            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                            seed=seed, stop=stop, stop_token_ids=stop_token_ids,
                                            ignore_eos=ignore_eos, model=model, request_id=request_id,
                                            session_id=session_id)
        return GenerateStream(self._stub.Generate(request, timeout=self._deadline(timeout), metadata=self._metadata))

    def complete(self, prompt: Optional[str] = None, **kwargs) -> Completion:
        """generate() collected into one Completion."""
        collector = Collector()
        for chunk in self.generate(prompt, **kwargs):
            collector.add(chunk)
        return collector.result()

    def chat(self, messages: Iterable[_request.Message], **kwargs) -> Completion:
        """The assistant's answer to chat turns ({"role", "content"} dicts or (role, content))."""
        return self.complete(messages=messages, **kwargs)

    def tokenize(self, text: Optional[str] = None, *, messages: Optional[Iterable[_request.Message]] = None,
                 model: str = "", timeout: Optional[float] = None) -> List[int]:
        """Token ids of a text (or chat) prompt, as generate() would see them."""
        try:
            response = self._stub.Tokenize(_request.tokenize_request(text, messages, model),
                                           timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return list(response.token_ids)

    def info(self, timeout: Optional[float] = None) -> pb.GetModelInfoResponse:
        """The served model and every worker's state (a latentserve.v1.GetModelInfoResponse)."""
        try:
            return self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self._deadline(timeout),
                                           metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def create_session(self, document: Optional[str] = None, *, document_tokens: Optional[Sequence[int]] = None,
                       messages: Optional[Iterable[_request.Message]] = None, pinned: bool = False,
                       ttl: Optional[float] = None, idle_timeout: Optional[float] = None, model: str = "",
                       request_id: str = "", timeout: Optional[float] = None) -> Session:
        """A document prefilled once and kept; returns when it is in the cache.

        Exactly one of document (text), document_tokens (ids) or messages (chat turns).
        pinned: never evicted for room while the session lives. ttl / idle_timeout: seconds
        (None: the router's defaults, which also cap them). Questions: ask(session_id, ...).
        """
        request = _request.create_session_request(document, document_tokens, messages, pinned=pinned, ttl=ttl,
                                                  idle_timeout=idle_timeout, model=model, request_id=request_id)
        try:
            response = self._stub.CreateSession(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return session_from_proto(response.session, response.prefill_ms)

    def ask(self, session_id: str, prompt: Optional[str] = None, **kwargs) -> Completion:
        """complete() of a suffix (prompt, prompt_tokens= or messages=) over a session's document."""
        return self.complete(prompt, session_id=session_id, **kwargs)

    def list_sessions(self, timeout: Optional[float] = None) -> List[Session]:
        """This client's sessions."""
        try:
            response = self._stub.ListSessions(pb.ListSessionsRequest(), timeout=self._deadline(timeout),
                                                 metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return [session_from_proto(s) for s in response.sessions]

    def close_session(self, session_id: str, timeout: Optional[float] = None) -> None:
        """Ends a session and frees its document's cache (NotFound: unknown, expired or not this client's)."""
        try:
            self._stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=self._deadline(timeout),
                                     metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
