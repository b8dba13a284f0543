#!/usr/bin/env python3
"""Integration tests of /metrics, TLS / mutual TLS, bearer tokens and per-client limits.

Real `latentserve` processes on loopback; a throwaway CA and certificates are made with the
`openssl` CLI at test time. Run: test_security_metrics.py --bin build/bin/latentserve.
"""
import os
import re
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_serving as ts  # noqa: E402  (Cluster, wait_for, prompt, parse_result)


def read(path):
    with open(path) as f:
        return f.read()


def without_model_label(name):
    """Every sample carries model="..." as its last label (test_metrics.py checks it); keys here omit it."""
    return re.sub(r'\{model="[^"]*"\}$', "", re.sub(r',model="[^"]*"\}$', "}", name))


def scrape(url):
    return scrape_with_timeout(url, 5)


def scrape_with_timeout(url, seconds):
    with urllib.request.urlopen(url, timeout=seconds) as response:
        text = response.read().decode()
    return {without_model_label(line.rsplit(" ", 1)[0]): float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def metrics_url(cluster, name):
    log = os.path.join(cluster.dir, f"{name}.log")
    found = ts.wait_for(lambda: re.search(r"metrics on (http://\S+)", read(log)), 10, f"{name} metrics")
    return found.group(1)


def make_pki(directory):
    """CA, a server/worker identity for 127.0.0.1 (used as server and internal client cert) and a client cert."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=directory)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=latentserve-test-ca")
    with open(os.path.join(directory, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("node", "latentserve-node"), ("client", "test-client")):
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", "san.ext")
    with open(os.path.join(directory, "token"), "w") as f:
        f.write("s3cret-test-token\n")
    with open(os.path.join(directory, "wrong-token"), "w") as f:
        f.write("not-the-token\n")
    return {k: os.path.join(directory, v) for k, v in
            dict(ca="ca.pem", node_cert="node.pem", node_key="node.key", client_cert="client.pem",
                 client_key="client.key", token="token", wrong_token="wrong-token").items()}


class SecureCluster(ts.Cluster):
    """A Cluster whose `client info` / `generate` calls carry TLS and token flags."""

    def __init__(self, *args, client_flags=(), **kwargs):
        self.client_flags = list(client_flags)
        super().__init__(*args, **kwargs)

    def info(self):
        out = subprocess.run([ts.BIN, "client", "info", "--target", self.router, *self.client_flags],
                             capture_output=True, text=True, timeout=10)
        return ts.json.loads(out.stdout.strip().splitlines()[-1])

    def generate(self, ids=None, max_tokens=8, extra=(), **kwargs):
        return super().generate(ids, max_tokens, extra=[*self.client_flags, *extra], **kwargs)


class Metrics(unittest.TestCase):
    def test_counters_move_on_every_process(self):
        flags = ["--metrics-listen", "127.0.0.1:0"]
        c = ts.Cluster("metrics", prefill=1, decode=1, router_flags=flags, worker_flags=flags)
        try:
            router, prefill, decode = (metrics_url(c, n) for n in ("router", "prefill0", "decode0"))
            before = scrape(decode)
            ids = ts.prompt(100, salt=3)
            r = c.generate(ids, max_tokens=6)
            self.assertEqual(r["rc"], 0, r)
            bad = c.generate([999999], max_tokens=2)  # token id outside the vocabulary
            self.assertEqual(bad["error"]["code"], "INVALID_ARGUMENT")
            m = scrape(router)
            self.assertGreaterEqual(m['latentserve_router_requests_total{code="OK"}'], 1)
            self.assertGreaterEqual(m['latentserve_router_requests_total{code="INVALID_ARGUMENT"}'], 1)
            self.assertGreaterEqual(m["latentserve_router_time_to_first_token_seconds_count"], 1)
            self.assertGreaterEqual(m["latentserve_router_inter_token_seconds_count"], 5)
            self.assertEqual(m["latentserve_router_leases_active"], 0)
            up = {k: v for k, v in m.items() if k.startswith("latentserve_router_worker_up{")}
            self.assertEqual(sorted(up.values()), [1.0, 1.0], up)
            p = scrape(prefill)
            self.assertGreaterEqual(p["latentserve_prefill_tokens_total"], 100)
            self.assertGreater(p["latentserve_transfer_bytes_total"], 0)
            self.assertEqual(p["latentserve_transfer_failures_total"], 0)
            self.assertEqual(p["latentserve_prefill_queue_depth"], 0)
            d = scrape(decode)
            self.assertGreaterEqual(d["latentserve_decode_tokens_total"], 5)
            self.assertEqual(d['latentserve_cache_pages_free{role="decode"}'],
                             before['latentserve_cache_pages_free{role="decode"}'])
            self.assertEqual(d["latentserve_decode_leases_active"], 0)
            # One structured line per request event, with the request id; never the prompt.
            log = read(os.path.join(c.dir, "router.log"))
            self.assertIn('"event":"request_finished","request_id":"%s"' % r["request_id"], log)
            c.assert_baseline(self)
        finally:
            c.stop()

    def test_idle_connections_do_not_block_scrapes(self):
        # issue 17, 4: two idle half-open connections blocked every /metrics scrape (civetweb's
        # 2 threads, 30 s read timeout). Now 8 threads and a 5 s request timeout.
        import socket
        c = ts.Cluster("metrics-idle", prefill=0, decode=0, router_flags=["--metrics-listen", "127.0.0.1:0"])
        idle = []
        try:
            url = metrics_url(c, "router")
            host, port = url[len("http://"):].split("/")[0].split(":")
            for _ in range(12):  # more than the server's threads
                idle.append(socket.create_connection((host, int(port)), timeout=5))
            start = time.monotonic()
            values = scrape_with_timeout(url, 12)
            self.assertIn("latentserve_router_requests_in_flight", values)
            self.assertLess(time.monotonic() - start, 12)
        finally:
            for s in idle:
                s.close()
            c.stop()

    def test_bad_metrics_listen_fails_at_startup(self):
        done = subprocess.run([ts.BIN, "router", "--listen", "127.0.0.1:0", "--metrics-listen", "nonsense"],
                              capture_output=True, text=True, timeout=30)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("--metrics-listen", done.stderr)


class Security(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        pki_dir = os.path.join(ts.WORK, "pki")
        os.makedirs(pki_dir, exist_ok=True)
        cls.pki = make_pki(pki_dir)
        p = cls.pki
        cls.server_tls = ["--tls-cert", p["node_cert"], "--tls-key", p["node_key"], "--tls-ca", p["ca"]]
        cls.client_tls = ["--tls-ca", p["ca"], "--tls-cert", p["client_cert"], "--tls-key", p["client_key"]]
        # A split deployment names its components: internal RPCs only for CN=latentserve-node.
        cls.split_tls = [*cls.server_tls, "--internal-peer-cn", "latentserve-node"]
        cls.cluster = SecureCluster(
            "tls", serve=True, client_flags=[*cls.client_tls, "--auth-token-file", p["token"]],
            router_flags=[*cls.server_tls, "--auth-token-file", p["token"], "--max-streams-per-client", "1",
                          "--max-prompt-tokens", "4096", "--max-prompt-bytes", "65536",
                          "--metrics-listen", "127.0.0.1:0",
                          "--health-listen", "127.0.0.1:0"])

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def call(self, flags, max_tokens=4):
        done = subprocess.run([ts.BIN, "client", "generate", "--target", self.cluster.router, "--prompt-tokens",
                               "1,2,3,4,5", "--max-tokens", str(max_tokens), "--ignore-eos", "--json", *flags],
                              capture_output=True, text=True, timeout=60)
        return ts.parse_result(done.stdout, done.returncode)

    def test_tls_end_to_end(self):
        r = self.cluster.generate(ts.prompt(80, salt=5), max_tokens=5)
        self.assertEqual(r["rc"], 0, r)
        self.assertEqual(len(r["token_ids"]), 5)
        self.cluster.assert_baseline(self)

    def health(self, target, flags=()):
        done = subprocess.run([ts.BIN, "client", "health", "--target", target, *flags], capture_output=True,
                              text=True, timeout=30)
        return done.returncode, ts.json.loads(done.stdout.strip().splitlines()[-1])

    def test_plaintext_health_port_for_probes(self):
        # kubelet's gRPC probes cannot speak TLS: --health-listen serves grpc.health.v1 alone
        # in plaintext, while the serving port accepts only TLS.
        log = os.path.join(self.cluster.dir, "serve.log")
        health = ts.wait_for(lambda: re.search(r"health on (\S+)", read(log)), 10, "the health port").group(1)
        self.assertEqual(self.health(health), (0, {"status": "SERVING"}))
        self.assertEqual(self.health(self.cluster.router, self.client_tls), (0, {"status": "SERVING"}))
        rc, out = self.health(self.cluster.router)  # plaintext to the TLS port
        self.assertNotEqual(rc, 0)
        self.assertEqual(out["error"]["code"], "UNAVAILABLE")
        rc, out = self.health(health, ["--service", "no.such.Service"])
        self.assertNotEqual(rc, 0)
        self.assertEqual(out["error"]["code"], "NOT_FOUND")

    def test_client_without_ca_fails(self):
        # issue 17, 4: the client refuses to send the token in plaintext at all.
        r = self.call(["--auth-token-file", self.pki["token"]])
        self.assertEqual(r["error"]["code"], "INVALID_ARGUMENT", r)
        self.assertIn("--tls-ca", r["error"]["message"])
        r = self.call([])  # plaintext to a TLS port
        self.assertEqual(r["error"]["code"], "UNAVAILABLE", r)
        # issue 17, 10: the refusal says what to check ("Socket closed" alone did not).
        self.assertIn("--tls-ca", r["error"]["message"], r)

    def test_client_without_certificate_rejected_by_mtls(self):
        r = self.call(["--tls-ca", self.pki["ca"], "--auth-token-file", self.pki["token"]])
        self.assertEqual(r["error"]["code"], "UNAVAILABLE")
        self.assertIn("--tls-cert", r["error"]["message"], r)

    def test_client_trusting_another_ca_gets_a_tls_hint(self):
        # issue 17, 10: a client whose --tls-ca did not sign the server's certificate saw only
        # "Socket closed" / a handshake error; now UNAVAILABLE says which flag to check.
        other = os.path.join(ts.WORK, "other-ca")
        os.makedirs(other, exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=another-ca"],
                       check=True, capture_output=True, timeout=60, cwd=other)
        r = self.call(["--tls-ca", os.path.join(other, "ca.pem"), "--tls-cert", self.pki["client_cert"],
                       "--tls-key", self.pki["client_key"], "--auth-token-file", self.pki["token"]])
        self.assertEqual(r["error"]["code"], "UNAVAILABLE", r)
        self.assertIn("check that --tls-ca signed the server's certificate", r["error"]["message"], r)

    def test_missing_or_wrong_token(self):
        r = self.call(self.client_tls)
        self.assertEqual(r["error"]["code"], "UNAUTHENTICATED")
        r = self.call([*self.client_tls, "--auth-token-file", self.pki["wrong_token"]])
        self.assertEqual(r["error"]["code"], "UNAUTHENTICATED")
        for log in os.listdir(self.cluster.dir):
            if log.endswith(".log"):
                self.assertNotIn("s3cret-test-token", read(os.path.join(self.cluster.dir, log)))

    def test_prompt_limit(self):
        r = self.cluster.generate(ts.prompt(5000), max_tokens=2)
        self.assertEqual(r["error"]["code"], "INVALID_ARGUMENT")
        self.assertIn("--max-prompt-tokens", r["error"]["message"])
        # The typed details (google.rpc.ErrorInfo in grpc-status-details-bin), read by the client.
        self.assertEqual(r["error"]["reason"], "PROMPT_TOO_LONG", r)
        self.assertEqual(r["error"]["metadata"], {"prompt_tokens": "5000", "limit_tokens": "4096"}, r)
        self.assertNotIn("retry_delay_ms", r["error"], r)

    def client_json(self, verb, prompt_text):
        path = os.path.join(self.cluster.dir, f"prompt-{len(prompt_text)}.txt")
        with open(path, "w") as f:
            f.write(prompt_text)
        args = [ts.BIN, "client", verb, "--target", self.cluster.router, "--prompt-file", path,
                *self.cluster.client_flags]
        if verb == "generate":
            args += ["--max-tokens", "2", "--json"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
        return ts.json.loads(done.stdout.strip().splitlines()[-1])

    def test_prompt_bytes_limit_comes_before_tokenizing(self):
        # issue 17, 7: byte limits checked before the tokenizer runs; Tokenize under the same
        # limits as Generate.
        big = "hello world " * 8000  # 96000 bytes > --max-prompt-bytes 65536
        for verb in ("generate", "tokenize"):
            out = self.client_json(verb, big)
            self.assertEqual(out["error"]["code"], "INVALID_ARGUMENT", out)
            self.assertIn("--max-prompt-bytes", out["error"]["message"])
        many_tokens = "a b c d " * 2000  # 16000 bytes, well over 4096 tokens
        out = self.client_json("tokenize", many_tokens)
        self.assertEqual(out["error"]["code"], "INVALID_ARGUMENT", out)
        self.assertIn("--max-prompt-tokens", out["error"]["message"])
        out = self.client_json("tokenize", "hello world")
        self.assertTrue(out["token_ids"], out)

    def test_stream_limit_per_client(self):
        url = metrics_url(self.cluster, "serve")
        long_call = self.cluster.generate(ts.prompt(64, salt=9), max_tokens=20000, background=True)
        try:
            ts.wait_for(lambda: scrape(url)["latentserve_router_requests_in_flight"] >= 1, 20, "the first stream")
            r = self.cluster.generate(ts.prompt(8), max_tokens=2)
            self.assertEqual(r["error"]["code"], "RESOURCE_EXHAUSTED", r)
            # Typed details: ErrorInfo reason + the limit, RetryInfo's delay.
            self.assertEqual(r["error"]["reason"], "STREAM_LIMIT_EXCEEDED", r)
            self.assertEqual(r["error"]["metadata"], {"limit": "1"}, r)
            self.assertEqual(r["error"]["retry_delay_ms"], 1000, r)
        finally:
            long_call.kill()
            long_call.wait(10)
        self.cluster.assert_baseline(self)
        self.assertGreaterEqual(scrape(url)["latentserve_router_stream_limit_rejections_total"], 1)

    def test_split_deployment_streams_the_cache_over_mtls(self):
        # Router, prefill and decode as separate processes, every channel (the cache transfer
        # included) over mutual TLS; the answer equals the plaintext single-process reference.
        c = SecureCluster("mtls-transfer", prefill=1, decode=1, client_flags=[*self.client_tls],
                          router_flags=self.split_tls, worker_flags=self.split_tls)
        try:
            prompt = ts.prompt(150, salt=11)
            r = c.generate(prompt, max_tokens=6)
            self.assertEqual(r["rc"], 0, r)
            self.assertGreater(r["usage"]["cache_bytes_transferred"], 0)
            self.assertEqual(r["token_ids"], ts.reference_greedy(prompt, 6))
            c.assert_baseline(self)
        finally:
            c.stop()

    def test_worker_without_client_certificate_is_rejected(self):
        # A split deployment with mutual TLS: a worker with the node identity registers, one
        # without a client certificate never does.
        c = SecureCluster("mtls-split", prefill=0, decode=1, client_flags=[*self.client_tls],
                          router_flags=self.split_tls, worker_flags=self.split_tls)
        try:
            c.worker_flags = []  # no TLS flags at all
            plain_address = c.add_worker("decode", "plain-decode")
            log = os.path.join(c.dir, "plain-decode.log")
            ts.wait_for(lambda: "retrying" in read(log), 20, "the plain worker's registration to fail")
            workers = c.info()["workers"]
            self.assertEqual([w["address"] for w in workers if w["alive"]], [c.procs["decode0"].address])
            self.assertNotIn(plain_address, [w["address"] for w in workers])
        finally:
            c.stop()

if __name__ == "__main__":
    ts.main()  # parses --bin, makes the test model, runs this module's tests
