#!/usr/bin/env python3
"""What each role exports on /metrics and writes to its log (issue 18, item 5).

A split deployment on loopback, every process with --metrics-listen: one request, then each
role is scraped and its families' names, types and buckets are checked, with the model label
on every sample and no family of another role. Logs: typed JSON values, a level, request ids
that differ between router replicas. Run: test_metrics.py --bin build/bin/latentserve
"""
import json
import os
import re
import subprocess
import sys
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_serving as ts  # noqa: E402
import test_security_metrics as tsm  # noqa: E402  (metrics_url)

METRICS = ("--metrics-listen", "127.0.0.1:0")
OTHER_ROLES = {
    "router": ("latentserve_prefill_", "latentserve_decode_", "latentserve_transfer_"),
    "prefill0": ("latentserve_router_", "latentserve_decode_"),
    "decode0": ("latentserve_router_", "latentserve_prefill_", "latentserve_transfer_"),
}


def scrape_text(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def families(text):
    """{name: type} from the # TYPE lines, and the sample lines."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    return types, samples


def log_lines(cluster, name):
    with open(os.path.join(cluster.dir, f"{name}.log")) as f:
        return [json.loads(line) for line in f if line.startswith('{"ts"')]


class RoleMetricsAndLogs(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = ts.Cluster("metrics", router_flags=METRICS, worker_flags=METRICS)
        result = cls.cluster.generate(ts.prompt(40), max_tokens=4)
        assert result["rc"] == 0, result
        cls.request_id = result["request_id"]
        cls.model = cls.cluster.info()["model_name"]
        cls.scraped = {name: families(scrape_text(tsm.metrics_url(cls.cluster, name))) for name in OTHER_ROLES}

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def test_router_families_types_and_buckets(self):
        types, samples = self.scraped["router"]
        want = {
            "latentserve_router_time_to_first_token_seconds": "histogram",
            "latentserve_router_e2e_request_seconds": "histogram",
            "latentserve_router_queue_seconds": "histogram",
            "latentserve_router_inter_token_seconds": "histogram",
            "latentserve_router_prompt_tokens": "histogram",
            "latentserve_router_generation_tokens": "histogram",
            "latentserve_router_requests_waiting": "gauge",
            "latentserve_router_requests_in_flight": "gauge",
            "latentserve_router_requests_total": "counter",
            "latentserve_router_finished_total": "counter",
            "latentserve_router_worker_up": "gauge",
            "latentserve_build_info": "gauge",
            "process_cpu_seconds_total": "counter",
            "process_resident_memory_bytes": "gauge",
            "process_start_time_seconds": "gauge",
            "process_open_fds": "gauge",
        }
        for name, kind in want.items():
            self.assertEqual(types.get(name), kind, name)
        for name in ("latentserve_router_time_to_first_token_seconds", "latentserve_router_e2e_request_seconds",
                     "latentserve_router_queue_seconds"):
            self.assertTrue(any(s.startswith(f"{name}_bucket{{") and 'le="3600"' in s for s in samples), name)
        self.assertTrue(any(s.startswith("latentserve_router_finished_total{") and 'reason="length"' in s
                            for s in samples))
        self.assertTrue(any(s.startswith("latentserve_router_prompt_tokens_bucket{") and 'le="1048576"' in s
                            for s in samples))

    def test_worker_families(self):
        types, samples = self.scraped["prefill0"]
        self.assertEqual(types.get("latentserve_prefill_seconds"), "histogram")
        self.assertEqual(types.get("latentserve_prefill_tokens_total"), "counter")
        self.assertTrue(any(s.startswith("latentserve_prefill_seconds_bucket{") and 'le="3600"' in s for s in samples))
        types, samples = self.scraped["decode0"]
        self.assertEqual(types.get("latentserve_decode_tokens_total"), "counter")
        self.assertEqual(types.get("latentserve_decode_lease_expired_total"), "counter")
        self.assertEqual(types.get("latentserve_cache_pages_free"), "gauge")

        def value(name):
            return sum(float(s.rsplit(" ", 1)[1]) for s in samples if s.startswith(name + "{"))
        # The one request's cache arrived over gRPC: through this worker's host memory.
        self.assertEqual(value("latentserve_decode_handoffs_admitted_total"), 1)
        self.assertGreater(value("latentserve_decode_handoff_host_bytes_total"), 0)
        # One sequence: a step for each token the decode worker generated (the prefill's first is not one).
        self.assertEqual(types.get("latentserve_decode_steps_total"), "counter")
        self.assertGreaterEqual(value("latentserve_decode_steps_total"), 1)
        self.assertEqual(value("latentserve_decode_steps_total"), value("latentserve_decode_tokens_total"))
        # Those steps took time to run, and after each some to take its tokens (greedy: no host sampling).
        self.assertEqual(types.get("latentserve_decode_step_seconds_total"), "counter")
        self.assertGreater(value("latentserve_decode_step_seconds_total"), 0)
        self.assertEqual(types.get("latentserve_decode_sample_seconds_total"), "counter")
        self.assertGreater(value("latentserve_decode_sample_seconds_total"), 0)

    def test_every_documented_family_is_exported_by_some_role(self):
        # k8s/validate holds alerts, dashboards and autoscalers to this list (docs/operations.md).
        with open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "operations.md")) as f:
            text = f.read()
        section = text[text.index("## Metrics and logs"):]
        section = section[:section.index("\n## ")]
        documented = set(re.findall(r"\b(?:latentserve|process)_[a-z0-9_]+", section))
        exported = set().union(*(types for types, _ in self.scraped.values()))
        self.assertGreater(len(documented), 20)
        self.assertFalse(documented - exported, "documented but exported by no role")

    def test_each_role_exports_only_its_families_and_labels_the_model(self):
        for name, foreign in OTHER_ROLES.items():
            types, samples = self.scraped[name]
            self.assertFalse([t for t in types if t.startswith(foreign)], name)
            # (exposer_* are prometheus-cpp's own, about the HTTP endpoint)
            unlabelled = [s for s in samples if f'model="{self.model}"' not in s and not s.startswith("exposer_")]
            self.assertFalse(unlabelled, f"{name}: samples without model=\"{self.model}\": {unlabelled[:3]}")

    def test_logs_are_typed_json_with_a_level(self):
        started = [e for e in log_lines(self.cluster, "router")
                   if e["event"] == "request_started" and e["request_id"] == self.request_id]
        self.assertEqual(len(started), 1)
        self.assertEqual(started[0]["level"], "info")
        self.assertIsInstance(started[0]["prompt_tokens"], int)
        done = [e for e in log_lines(self.cluster, "prefill0") if e["event"] == "prefill_done"]
        self.assertTrue(done)
        self.assertIsInstance(done[-1]["prefill_ms"], (int, float))
        self.assertRegex(self.request_id, r"^req-[0-9a-f]{8}-\d+$")

    def test_request_ids_differ_between_router_replicas(self):
        c = self.cluster
        workers = c.info()["workers"]
        prefill = ",".join(w["address"] for w in workers if w["role"] == "prefill")
        decode = ",".join(w["address"] for w in workers if w["role"] == "decode")
        replica = c._start("router2", ["router", "--listen", "127.0.0.1:0", "--prefill-workers", prefill,
                                       "--decode-workers", decode])
        ts.wait_for(lambda: len([w for w in run_info(replica) if w["alive"]]) == 2, 30, "the replica's workers")
        out = subprocess.run([ts.BIN, "client", "generate", "--target", replica, "--prompt-tokens", "1,2,3",
                              "--max-tokens", "2", "--json"], capture_output=True, text=True, timeout=60)
        other = ts.parse_result(out.stdout, out.returncode)
        self.assertEqual(other["rc"], 0, other)
        self.assertNotEqual(other["request_id"].rsplit("-", 1)[0], self.request_id.rsplit("-", 1)[0])


def run_info(target):
    out = subprocess.run([ts.BIN, "client", "info", "--target", target], capture_output=True, text=True, timeout=10)
    try:
        return json.loads(out.stdout)["workers"]
    except (ValueError, KeyError):
        return []


def main():
    ts.run_suite("latentserve-metrics-")

if __name__ == "__main__":
    main()
