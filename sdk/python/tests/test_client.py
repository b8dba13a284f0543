"""latentserve.Client / AsyncClient against a real `serve` process."""
import asyncio
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request

import grpc
import pytest

import latentserve
from conftest import BIN, Serve, wait_for


def grpc_cli_greedy(target, prompt, max_tokens):
    """The C++ client's answer (`latentserve client generate --json`), the reference."""
    out = subprocess.run([BIN, "client", "generate", "--target", target, "--prompt", prompt, "--max-tokens",
                          str(max_tokens), "--json"], check=True, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_generate_streams_chunks(serve):
    with latentserve.Client(serve.target, timeout=60) as client:
        chunks = list(client.generate("The quick brown fox", max_tokens=8, ignore_eos=True))
    kinds = [c.kind for c in chunks]
    assert kinds[0] == "progress" and kinds[-1] == "finished"
    assert kinds.count("finished") == 1 and "tokens" in kinds
    progress = [c for c in chunks if c.kind == "progress"][-1]
    assert progress.tokens_done == progress.tokens_total > 0
    finished = chunks[-1]
    assert finished.finish_reason == "length"
    assert finished.usage.completion_tokens == 8
    assert finished.usage.prompt_tokens == progress.tokens_total
    assert sum(len(c.token_ids) for c in chunks) == 8
    assert finished.request_id


def test_complete_matches_the_cpp_client(serve):
    with latentserve.Client(serve.target) as client:
        answer = client.complete("Hello world", max_tokens=10)
    reference = grpc_cli_greedy(serve.target, "Hello world", 10)
    assert answer.token_ids == reference["token_ids"]
    assert answer.text == reference["text"]


def test_prompt_tokens_and_tokenize_agree_with_text(serve):
    with latentserve.Client(serve.target) as client:
        ids = client.tokenize("Once upon a time")
        assert ids and all(isinstance(i, int) for i in ids)
        by_text = client.complete("Once upon a time", max_tokens=6, ignore_eos=True)
        by_ids = client.complete(prompt_tokens=ids, max_tokens=6, ignore_eos=True)
        assert by_ids.token_ids == by_text.token_ids
        assert by_ids.usage.prompt_tokens == len(ids)


def test_chat_and_info(serve):
    messages = [{"role": "system", "content": "be brief"}, ("user", "Hi there")]
    with latentserve.Client(serve.target) as client:
        answer = client.chat(messages, max_tokens=5, ignore_eos=True)
        assert answer.usage.completion_tokens == 5
        assert answer.usage.prompt_tokens == len(client.tokenize(messages=messages))
        info = client.info()
    assert info.has_tokenizer and info.vocab_size > 0
    assert {w.role for w in info.workers if w.alive} == {"prefill", "decode"}


def test_errors_keep_the_grpc_code(serve):
    with latentserve.Client(serve.target) as client:
        with pytest.raises(latentserve.InvalidArgument) as bad:
            list(client.generate("x", max_tokens=0))
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_tokens" in bad.value.details
        assert not bad.value.retryable
        with pytest.raises(latentserve.NotFound):
            list(client.generate("x", max_tokens=1, model="no-such-model"))
        with pytest.raises(latentserve.DeadlineExceeded):
            list(client.generate("x", max_tokens=4000, ignore_eos=True, timeout=0.3))
        with pytest.raises(ValueError):
            client.generate("x", prompt_tokens=[1])
    with latentserve.Client("127.0.0.1:1", timeout=2) as nobody:
        with pytest.raises(latentserve.Unavailable) as down:
            nobody.info()
        assert down.value.retryable


def test_cancel_stops_the_request_on_the_server(serve):
    with latentserve.Client(serve.target) as client:
        stream = client.generate("Tell me everything", max_tokens=4000, ignore_eos=True, request_id="sdk-cancel-1")
        for chunk in stream:
            if chunk.kind == "tokens":
                break
        stream.cancel()
    finished = wait_for(lambda: [e for e in serve.events("sdk-cancel-1") if e["event"] == "request_finished"], 20,
                        "the server to end the cancelled request")
    assert finished[0]["code"] == "CANCELLED"


def test_asyncio_client(serve):
    async def main():
        async with latentserve.AsyncClient(serve.target, timeout=60) as client:
            texts = await asyncio.gather(*(client.complete(p, max_tokens=6) for p in ("Hello world", "Hello world")))
            kinds = [c.kind async for c in client.generate("Hi", max_tokens=3, ignore_eos=True)]
            with pytest.raises(latentserve.InvalidArgument):
                await client.complete("x", max_tokens=0)
            return texts, kinds, await client.tokenize("Hi"), await client.info()
    (first, second), kinds, ids, info = asyncio.run(main())
    assert first.token_ids == second.token_ids
    assert kinds[-1] == "finished" and kinds.count("tokens") >= 1
    assert ids and info.vocab_size > 0
    with latentserve.Client(serve.target) as client:
        assert client.complete("Hello world", max_tokens=6).token_ids == first.token_ids


def make_pki(directory):
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=directory)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=sdk-test-ca")
    with open(os.path.join(directory, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("node", "latentserve-node"), ("client", "sdk-client")):
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
            f"{name}.pem", "-days", "1", "-extfile", "san.ext")
    with open(os.path.join(directory, "token"), "w") as f:
        f.write("s3cret-sdk-token\n")


def test_tls_and_bearer_token_on_grpc_and_http(workdir, model):
    directory = os.path.join(workdir, "tls")
    os.makedirs(directory)
    make_pki(directory)
    p = lambda name: os.path.join(directory, name)  # noqa: E731
    # Mutual TLS (serve's internal channels need --tls-ca, which makes client certificates
    # required) plus the bearer token.
    server = Serve(directory, model, "--tls-cert", p("node.pem"), "--tls-key", p("node.key"), "--tls-ca", p("ca.pem"),
                   "--auth-token-file", p("token"), "--http-listen", "127.0.0.1:0", "--http-port-file",
                   p("http.port"))
    mtls = dict(root_certificates=p("ca.pem"), private_key=p("client.key"), certificate_chain=p("client.pem"))
    try:
        with latentserve.Client(server.target, token="s3cret-sdk-token", **mtls) as client:
            assert client.complete("Hi", max_tokens=2, ignore_eos=True).usage.completion_tokens == 2
        for token in (None, "wrong"):
            with latentserve.Client(server.target, token=token, **mtls) as client:
                with pytest.raises(latentserve.Unauthenticated) as denied:
                    client.info()
                assert denied.value.code == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(ValueError):
            latentserve.Client(server.target, token="s3cret-sdk-token")  # a token in plaintext

        # The HTTP front: HTTPS with the same certificate, the same token on every /v1 request.
        wait_for(lambda: os.path.exists(p("http.port")), 10, "the HTTP front")
        base = "https://" + open(p("http.port")).read().strip()
        tls = ssl.create_default_context(cafile=p("ca.pem"))
        tls.load_cert_chain(p("client.pem"), p("client.key"))

        def post(token):
            body = json.dumps({"prompt": "Hi", "max_tokens": 2, "ignore_eos": True}).encode()
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            request = urllib.request.Request(base + "/v1/completions", data=body, headers=headers)
            try:
                with urllib.request.urlopen(request, context=tls, timeout=60) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())
        status, body = post("s3cret-sdk-token")
        assert status == 200 and body["usage"]["completion_tokens"] == 2
        for token in (None, "wrong"):
            status, body = post(token)
            assert status == 401 and body["error"]["type"] == "authentication_error"
        with urllib.request.urlopen(base + "/health", context=tls, timeout=10) as response:  # probes need no token
            assert response.status == 200
    finally:
        server.stop()


def test_readme_example_streams_an_answer(serve):
    """The snippet in sdk/python/README.md, run as a user would (target swapped in)."""
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(snippet.strip().splitlines()) <= 5
    snippet = snippet.replace("127.0.0.1:50051", serve.target).replace("max_tokens=32", "max_tokens=32, ignore_eos=True")
    import sys
    out = subprocess.run([sys.executable, "-c", snippet], check=True, capture_output=True, text=True, timeout=60)
    with latentserve.Client(serve.target) as client:
        assert out.stdout == client.complete("Hello", max_tokens=32, ignore_eos=True).text


def test_forged_forwarded_client_is_not_believed(serve):
    """Only the HTTP front's in-process calls (with the process's random key) may name a client."""
    from latentserve.v1 import generate_pb2 as pb
    with latentserve.Client(serve.target) as client:
        request = pb.GenerateRequest(text="Hi", request_id="forged-1",
                                     stopping=pb.StoppingCriteria(max_tokens=1, ignore_eos=True))
        metadata = (("latentserve-forwarded-client", "someone-else"), ("latentserve-forwarded-key", "fk-guess"))
        list(client._stub.Generate(request, metadata=metadata, timeout=30))
    finished = wait_for(lambda: [e for e in serve.events("forged-1") if e["event"] == "request_finished"], 10,
                        "the request to finish")
    assert finished[0]["client"].startswith("ipv4:127.0.0.1"), finished[0]


def test_sessions_create_ask_list_close(workdir, model):
    """A document once, questions over it: the same greedy tokens as the whole prompt asked plainly."""
    directory = os.path.join(workdir, "sessions")
    os.makedirs(directory)
    server = Serve(directory, model, "--prefix-cache-mib", "64")
    try:
        document = [(7 * i) % 250 + 3 for i in range(150)]
        question = [11, 12, 13, 14, 15]
        with latentserve.Client(server.target, timeout=60) as client:
            plain = client.complete(prompt_tokens=document + question, max_tokens=6, ignore_eos=True)
            session = client.create_session(document_tokens=document, pinned=True, idle_timeout=120)
            assert session.session_id.startswith("sess-") and session.document_tokens == len(document)
            assert session.pinned and session.prefill_ms > 0
            answer = client.ask(session.session_id, prompt_tokens=question, max_tokens=6, ignore_eos=True)
            assert answer.token_ids == plain.token_ids
            assert answer.usage.prompt_tokens == len(document) + len(question)
            assert answer.usage.cached_tokens == len(document)
            text = client.ask(session.session_id, " and then", max_tokens=3, ignore_eos=True)
            assert text.usage.completion_tokens == 3 and text.usage.cached_tokens == len(document)
            listed = client.list_sessions()
            assert [(s.session_id, s.requests) for s in listed] == [(session.session_id, 2)]
            client.close_session(session.session_id)
            assert client.list_sessions() == []
            with pytest.raises(latentserve.NotFound) as gone:
                client.ask(session.session_id, prompt_tokens=question, max_tokens=1)
            assert "session" in gone.value.details.lower()
            with pytest.raises(latentserve.NotFound):
                client.close_session(session.session_id)
            with pytest.raises(ValueError):
                client.create_session("text", document_tokens=[1])

        async def main():
            async with latentserve.AsyncClient(server.target, timeout=60) as client:
                s = await client.create_session(document_tokens=document)
                answers = await asyncio.gather(*(client.ask(s.session_id, prompt_tokens=question, max_tokens=6,
                                                            ignore_eos=True) for _ in range(3)))
                listed = await client.list_sessions()
                await client.close_session(s.session_id)
                return answers, listed, await client.list_sessions()
        answers, listed, after = asyncio.run(main())
        assert all(a.token_ids == plain.token_ids for a in answers)
        assert len(listed) == 1 and listed[0].requests == 3 and after == []
    finally:
        server.stop()
