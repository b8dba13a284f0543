"""Keyword arguments -> latentserve.v1 request messages (shared by the sync and asyncio clients)."""
from typing import Iterable, Mapping, Optional, Sequence, Union

import grpc

from latentserve.v1 import generate_pb2 as pb

Message = Union[Mapping[str, str], Sequence[str]]  # {"role": ..., "content": ...} or (role, content)


def chat_messages(messages: Iterable[Message], add_generation_prompt: Optional[bool] = None) -> pb.ChatMessages:
    chat = pb.ChatMessages()
    for m in messages:
        role, content = (m["role"], m["content"]) if isinstance(m, Mapping) else (m[0], m[1])
        chat.messages.add(role=role, content=content)
    if add_generation_prompt is not None:
        chat.add_generation_prompt = add_generation_prompt
    return chat


def generate_request(prompt: Optional[str], prompt_tokens: Optional[Sequence[int]],
                     messages: Optional[Iterable[Message]], *, max_tokens: int, temperature: float, top_k: int,
                     top_p: float, min_p: float, seed: int, stop: Optional[Sequence[str]],
                     stop_token_ids: Optional[Sequence[int]], ignore_eos: bool, model: str,
                     request_id: str, session_id: str = "") -> pb.GenerateRequest:
    given = sum(x is not None for x in (prompt, prompt_tokens, messages))
    if given != 1:
        raise ValueError("give exactly one of prompt=, prompt_tokens= or messages=")
    if isinstance(stop, str):
        stop = [stop]
    request = pb.GenerateRequest(
        model=model, request_id=request_id, session_id=session_id,
        sampling=pb.SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed),
        stopping=pb.StoppingCriteria(max_tokens=max_tokens, stop_token_ids=list(stop_token_ids or ()),
                                     stop_strings=list(stop or ()), ignore_eos=ignore_eos))
    if prompt is not None:
        request.text = prompt
    elif prompt_tokens is not None:
        request.tokens.ids.extend(prompt_tokens)
    else:
        request.chat.CopyFrom(chat_messages(messages))
    return request


def create_session_request(document: Optional[str], document_tokens: Optional[Sequence[int]],
                           messages: Optional[Iterable[Message]], *, pinned: bool, ttl: Optional[float],
                           idle_timeout: Optional[float], model: str,
                           request_id: str) -> pb.CreateSessionRequest:
    """ttl / idle_timeout in seconds (None: the router's defaults, which also cap them)."""
    if sum(x is not None for x in (document, document_tokens, messages)) != 1:
        raise ValueError("give exactly one of document=, document_tokens= or messages=")
    for name, value in (("ttl", ttl), ("idle_timeout", idle_timeout)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be > 0 seconds (or None for the router's default)")
    request = pb.CreateSessionRequest(model=model, request_id=request_id, pinned=pinned,
                                      ttl_ms=round(ttl * 1000) if ttl else 0,
                                      idle_timeout_ms=round(idle_timeout * 1000) if idle_timeout else 0)
    if document is not None:
        request.text = document
    elif document_tokens is not None:
        request.tokens.ids.extend(document_tokens)
    else:
        # A document's chat turns end without the assistant header: the questions continue them.
        request.chat.CopyFrom(chat_messages(messages, add_generation_prompt=False))
    return request


def tokenize_request(text: Optional[str], messages: Optional[Iterable[Message]], model: str) -> pb.TokenizeRequest:
    if (text is None) == (messages is None):
        raise ValueError("give exactly one of text= or messages=")
    if text is not None:
        return pb.TokenizeRequest(model=model, text=text)
    return pb.TokenizeRequest(model=model, chat=chat_messages(messages))


def channel_credentials(tls: bool, root_certificates: Optional[bytes], private_key: Optional[bytes],
                        certificate_chain: Optional[bytes]) -> Optional[grpc.ChannelCredentials]:
    """None for plaintext; TLS when tls=True or any certificate is given."""
    if not (tls or root_certificates or private_key or certificate_chain):
        return None
    return grpc.ssl_channel_credentials(root_certificates=root_certificates, private_key=private_key,
                                        certificate_chain=certificate_chain)


def read_bytes(value: Union[None, bytes, str]) -> Optional[bytes]:
    """PEM given as bytes, or as a path to a file."""
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()
