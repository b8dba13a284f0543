#!/usr/bin/env python3
"""Integration tests of issue 17's robustness findings: inputs refused at load or startup
(Startup) and processes that must not wedge (Wedge: a worker that stops producing, a call
quota, a listener out of file descriptors).

Real `latentserve` processes on loopback; helpers and the test model come from
test_serving.py. Run: test_robustness.py --bin build/bin/latentserve.
"""
import json
import os
import re
import struct
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_serving as ts  # noqa: E402
from test_serving import Cluster, prompt, reference_greedy, wait_for  # noqa: E402


def gguf_metadata(buf):
    """A GGUF v3 file's metadata: ({key: (value type, value offset)}, tensor count, offset of the tensor infos)."""
    off = 8  # magic, version
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, off); off += 16
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    def skip_value(off, t):
        if t in sizes:
            return off + sizes[t]
        if t == 8:  # string
            n, = struct.unpack_from("<Q", buf, off)
            return off + 8 + n
        et, n = struct.unpack_from("<IQ", buf, off); off += 12  # array
        for _ in range(n):
            off = skip_value(off, et)
        return off
    kv = {}
    for _ in range(n_kv):
        n, = struct.unpack_from("<Q", buf, off); off += 8
        key = buf[off:off + n].decode(); off += n
        t, = struct.unpack_from("<I", buf, off); off += 4
        kv[key] = (t, off)
        off = skip_value(off, t)
    return kv, n_tensors, off


def gguf_kv_offsets(buf):
    return gguf_metadata(buf)[0]


def gguf_tensor_infos(buf):
    """(name, type offset, type, dims) of every tensor in a GGUF v3 file."""
    _, n_tensors, off = gguf_metadata(buf)
    out = []
    for _ in range(n_tensors):
        n, = struct.unpack_from("<Q", buf, off); off += 8
        name = buf[off:off + n].decode(); off += n
        nd, = struct.unpack_from("<I", buf, off); off += 4
        dims = struct.unpack_from("<%dQ" % nd, buf, off); off += 8 * nd
        t, = struct.unpack_from("<I", buf, off)
        out.append((name, off, t, dims))
        off += 4 + 8
    return out


class Startup(unittest.TestCase):
    def assert_refused(self, args, flag):
        done = subprocess.run([ts.BIN, *args], capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn(flag, done.stderr)

    def test_integer_weight_tensor_refused_at_load(self):
        # issue 17, 6: an i32 weight tensor loaded, the worker said SERVING, and the first
        # request aborted the process in DequantizeRow. Same bytes per element as f32, so
        # only the type changes.
        data = bytearray(open(ts.MODEL, "rb").read())
        name, type_offset, dtype, _ = next(t for t in gguf_tensor_infos(data) if t[0] == "output.weight")
        self.assertEqual(dtype, 0, "the test model's weights are f32")
        struct.pack_into("<I", data, type_offset, 26)  # GGML_TYPE_I32
        bad = os.path.join(ts.WORK, "i32_weight.gguf")
        with open(bad, "wb") as f:
            f.write(bytes(data))
        done = subprocess.run([ts.BIN, "decode", "--listen", "127.0.0.1:0", "--router", "127.0.0.1:1", "--model", bad],
                              capture_output=True, text=True, timeout=60)
        self.assertNotEqual(done.returncode, 0, done.stderr)
        self.assertIn("output.weight", done.stderr)
        self.assertIn("i32", done.stderr)

    def test_vocabulary_smaller_than_the_embedding_refused_at_load(self):
        # issue 17, 9: ids past the tokenizer's last token were dropped when decoding. The
        # token list loses its last entry without moving a byte: the count drops by one and
        # the second-to-last string grows over the last one's length and text.
        data = bytearray(open(ts.MODEL, "rb").read())
        t, off = gguf_kv_offsets(data)["tokenizer.ggml.tokens"]
        self.assertEqual(t, 9, "tokenizer.ggml.tokens is an array")
        element_type, count = struct.unpack_from("<IQ", data, off)
        self.assertEqual(element_type, 8, "of strings")
        pos, second_to_last = off + 12, None
        for i in range(count):
            n, = struct.unpack_from("<Q", data, pos)
            if i == count - 2:
                second_to_last = (pos, n)
            if i == count - 1:
                last_bytes = 8 + n
            pos += 8 + n
        struct.pack_into("<Q", data, off + 4, count - 1)
        struct.pack_into("<Q", data, second_to_last[0], second_to_last[1] + last_bytes)
        bad = os.path.join(ts.WORK, "small_vocab.gguf")
        with open(bad, "wb") as f:
            f.write(bytes(data))
        for args in (["generate", "--model", bad, "--prompt-tokens", "1,2,3", "--max-tokens", "1"],
                     ["decode", "--listen", "127.0.0.1:0", "--router", "127.0.0.1:1", "--model", bad]):
            done = subprocess.run([ts.BIN, *args], capture_output=True, text=True, timeout=60)
            self.assertNotEqual(done.returncode, 0, done.stderr)
            self.assertIn(f"tokenizer.ggml.tokens has {count - 1} tokens", done.stderr)

    def test_non_finite_hyperparameters_refused_at_load(self):
        # issue 17, 9: NaN / negative rms_eps and an infinite expert_weights_scale were accepted.
        original = open(ts.MODEL, "rb").read()
        cases = [("kimi-linear.attention.layer_norm_rms_epsilon", float("nan")),
                 ("kimi-linear.attention.layer_norm_rms_epsilon", -1e-5),
                 ("kimi-linear.expert_weights_scale", float("inf"))]
        for key, value in cases:
            with self.subTest(key=key, value=value):
                data = bytearray(original)
                vtype, offset = gguf_kv_offsets(data)[key]
                self.assertEqual(vtype, 6, "the test model stores it as f32")
                struct.pack_into("<f", data, offset, value)
                bad = os.path.join(ts.WORK, "bad_hparam.gguf")
                with open(bad, "wb") as f:
                    f.write(bytes(data))
                done = subprocess.run([ts.BIN, "decode", "--listen", "127.0.0.1:0", "--router", "127.0.0.1:1",
                                       "--model", bad], capture_output=True, text=True, timeout=60)
                self.assertNotEqual(done.returncode, 0, done.stderr)
                self.assertIn(key, done.stderr)

    def test_out_of_range_values_fail_at_startup(self):
        # issue 17, 6 and 9: a SIGFPE on --page-tokens 0, a one-page cache from a wrapped
        # --cache-tokens, and a port above 65535 that bound another port.
        worker = ["decode", "--listen", "127.0.0.1:0", "--router", "127.0.0.1:1", "--model", ts.MODEL]
        self.assert_refused([*worker, "--page-tokens", "0"], "--page-tokens")
        self.assert_refused([*worker, "--page-tokens", "-16"], "--page-tokens")
        self.assert_refused([*worker, "--cache-tokens", "9223372036854775807"], "--cache-tokens")
        self.assert_refused([*worker, "--max-lease-ttl-ms", "0"], "--max-lease-ttl-ms")
        self.assert_refused(["router", "--listen", "127.0.0.1:99999"], "0..65535")
        self.assert_refused(["router", "--listen", "127.0.0.1:-1"], "0..65535")

    def test_bad_model_file_exits_nonzero(self):
        bad = os.path.join(ts.WORK, "bad.gguf")
        with open(bad, "wb") as f:
            f.write(b"not a gguf file")
        done = subprocess.run([ts.BIN, "decode", "--listen", "127.0.0.1:0", "--router", "127.0.0.1:1", "--model", bad],
                              capture_output=True, text=True, timeout=30)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("latentserve decode:", done.stderr)

    def test_port_taken_exits_nonzero(self):
        c = Cluster("ports", prefill=1, decode=1)
        try:
            done = subprocess.run([ts.BIN, "router", "--listen", c.router], capture_output=True, text=True, timeout=30)
            self.assertNotEqual(done.returncode, 0)
            self.assertIn("cannot listen", done.stderr)
        finally:
            c.stop()



class Wedge(unittest.TestCase):
    def test_decode_worker_that_stops_producing_is_left_within_seconds(self):
        # issue 17, 8: a worker that is alive (it answers keepalive pings) but sends no token
        # used to hold its request until the client's deadline. --decode-progress-timeout-ms
        # cancels such a stream and the router resumes it on the other decode worker.
        c = Cluster("stall_decode", prefill=1, decode=1, router_flags=("--decode-progress-timeout-ms", "1500"))
        try:
            stalled = c._start("stalled", ["decode", "--listen", "127.0.0.1:0", "--router", c.router, "--model", ts.MODEL,
                                           "--chunk", ts.CHUNK, "--threads", ts.THREADS, "--fault-stall-decode-ms", "600000"])
            wait_for(lambda: c.alive_count() == 3, 30, "the stalling worker to register")
            log = os.path.join(c.dir, "router.log")
            resumed = False
            for attempt in range(4):  # placement rotates over the two decode workers
                ids = prompt(40, 60 + attempt)
                # Without the progress deadline a token every 600 s runs into this deadline.
                r = c.generate(ids, max_tokens=12, extra=("--timeout-ms", "30000"))
                self.assertEqual(r.get("error"), None, r)
                self.assertNotEqual(r["decode_worker"], stalled, r)
                self.assertEqual(r["token_ids"], reference_greedy(ids, 12))
                if '"event":"decode_resume"' in open(log).read():
                    resumed = True
                    break
            self.assertTrue(resumed, "no request was ever placed on the stalling worker")
            self.assertIn(stalled, open(log).read())
            self.assertIsNone(c.procs["stalled"].poll(), "the stalling worker is alive: keepalive did not end it")
        finally:
            c.stop()

    def test_calls_beyond_the_servers_quota_are_refused_and_it_recovers(self):
        # issue 17, 5: every server has a thread quota (--max-concurrent-calls): calls beyond
        # it are refused RESOURCE_EXHAUSTED instead of piling up, and the server serves again
        # as soon as calls end.
        c = Cluster("call_quota", prefill=1, decode=1, router_flags=("--max-concurrent-calls", "2"))
        held = []
        try:
            held.append(c.generate(prompt(30, 70), max_tokens=20000, background=True))
            wait_for(lambda: any(w["sequences_active"] > 0 for w in c.info()["workers"] if w["role"] == "decode"), 30,
                     "the first held stream to decode")
            held.append(c.generate(prompt(30, 71), max_tokens=20000, background=True))
            def refused():
                for i, proc in enumerate(held):
                    if proc.poll() is not None:
                        # A held stream that came while the quota's threads were busy (the
                        # previous probe's) was itself refused: hold again before probing.
                        held[i] = c.generate(prompt(30, 70 + i), max_tokens=20000, background=True)
                        time.sleep(0.5)
                        return None
                r = c.generate(prompt(8, 72), max_tokens=2, timeout=30)
                return r if r.get("error") else None
            r = wait_for(refused, 30, "a call beyond the quota of 2 to be refused")
            self.assertEqual(r["error"]["code"], "RESOURCE_EXHAUSTED", r)
            for proc in held:
                self.assertIsNone(proc.poll(), "the held streams are still running")
                proc.kill()
                proc.wait(10)
            held = []
            ok = wait_for(lambda: c.generate(prompt(8, 73), max_tokens=2, timeout=30).get("token_ids"), 30,
                          "a call once the held streams ended")
            self.assertEqual(ok, reference_greedy(prompt(8, 73), 2))
        finally:
            for proc in held:
                proc.kill()
            c.stop()

    def test_listener_out_of_descriptors_turns_health_not_serving(self):
        # issue 17, 5: out of file descriptors, grpc's listener stops accepting for good while
        # the health port kept saying SERVING, so nothing restarted the process. 300 idle
        # connections under a limit of 256 descriptors.
        import resource
        import socket
        d = os.path.join(ts.WORK, "emfile")
        os.makedirs(d, exist_ok=True)
        port_file = os.path.join(d, "router.port")
        log_path = os.path.join(d, "router.log")
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [ts.BIN, "router", "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--port-file", port_file],
                stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
        idle = []
        def health_status():
            found = re.search(r"health on (\S+)", open(log_path).read())
            if not found:
                return None
            out = subprocess.run([ts.BIN, "client", "health", "--target", found.group(1)], capture_output=True,
                                 text=True, timeout=10)
            lines = out.stdout.strip().splitlines()
            return json.loads(lines[-1]).get("status") if lines else None
        try:
            wait_for(lambda: os.path.exists(port_file), 30, "the router to listen")
            host, port = open(port_file).read().strip().split(":")
            time.sleep(5)  # two rounds of the listener watch on a healthy port: no false alarm
            self.assertEqual(health_status(), "SERVING")
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            if soft < 1024 <= hard:
                resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
            for _ in range(300):
                idle.append(socket.create_connection((host, int(port)), timeout=5))
            wait_for(lambda: "Too many open files" in open(log_path).read(), 10, "the router to run out of descriptors")
            for s in idle:
                s.close()
            idle = []
            # The health port's listener dies too if a probe reaches it while the router has
            # no descriptor left: ask only once the router has closed the idle connections.
            wait_for(lambda: len(os.listdir(f"/proc/{proc.pid}/fd")) < 128, 15,
                     "the router to close the idle connections")
            wait_for(lambda: health_status() == "NOT_SERVING", 15, "health to say NOT_SERVING")
            self.assertIn('"event":"listener_stopped"', open(log_path).read())
            self.assertIsNone(proc.poll())
        finally:
            for s in idle:
                s.close()
            proc.kill()
            proc.wait(10)


if __name__ == "__main__":
    ts.main()  # parses --bin, makes the test model, runs this module's tests
