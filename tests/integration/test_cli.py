#!/usr/bin/env python3
"""The `latentserve` command line as a user meets it (issue 18, item 1).

--help of every subcommand against its parser, --version, the documented command lines,
and the client flags against one real `serve` process on loopback with a generated model.
Run: test_cli.py --bin build/bin/latentserve --source-dir .
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_serving as ts  # noqa: E402  (Cluster, parse_result)

SOURCE_DIR = None


def run(*args, timeout=60):
    return subprocess.run([ts.BIN, *args], capture_output=True, text=True, timeout=timeout)


def subcommands():
    out = run("--help")
    names = re.findall(r"^  (\S+)\s", out.stdout, re.M)
    assert len(names) >= 10, out.stdout
    return names


def documented_flags(name):
    """Flags listed by `name --help`, and the whole text."""
    out = run(name, "--help")
    assert out.returncode == 0, f"{name} --help: rc {out.returncode}: {out.stderr}"
    return set(re.findall(r"^  --([a-z0-9-]+)", out.stdout, re.M)), out.stdout


def accepted_flags(name):
    """What the subcommand's parser accepts, from its own unknown-flag error."""
    argv = [name, "generate"] if name == "client" else [name]
    out = run(*argv, "--zz-no-such-flag")
    found = re.search(r"unknown flag --zz-no-such-flag \(accepted: ([^)]*)\)", out.stderr)
    assert out.returncode != 0 and found, f"{name}: {out.stderr}"
    return {flag[2:] for flag in found.group(1).split()}


class Help(unittest.TestCase):
    def test_every_subcommand_documents_exactly_the_flags_it_accepts(self):
        for name in subcommands():
            with self.subTest(subcommand=name):
                documented, text = documented_flags(name)
                self.assertIn(f"usage: latentserve {name}", text)
                self.assertRegex(text, r"\nexample:\n  latentserve " + re.escape(name) + " ")
                self.assertEqual(documented, accepted_flags(name))

    def test_every_usage_entry_is_a_built_subcommand(self):
        # A usage text without its subcommand compiled in (a cmd_*.cc left out of tools/CMakeLists)
        # lists nothing in --help, so the test above cannot see it.
        with open(os.path.join(SOURCE_DIR, "tools", "usage_text.cc")) as f:
            entries = set(re.findall(r'u\["([a-z-]+)"\]', f.read()))
        self.assertGreater(len(entries), 10)
        self.assertFalse(entries - set(subcommands()), "usage text for subcommands the binary lacks")

    def test_help_shows_defaults_and_short_h_works(self):
        _, text = documented_flags("serve")
        self.assertRegex(text, r"--cache-tokens N .*\(default: \d+\)")
        self.assertRegex(text, r"--worker-evict-ms MS .*\(default: 60000\)")
        self.assertEqual(run("plan", "-h").returncode, 0)

    def test_examples_parse(self):
        # Each example's flags are accepted by its subcommand (its parser, through --help's list).
        for name in subcommands():
            documented, text = documented_flags(name)
            example = text.split("\nexample:\n  ", 1)[1]
            for flag in re.findall(r"\s--([a-z0-9-]+)", example):
                self.assertIn(flag, documented, f"{name} example uses --{flag}")

    def test_version_names_a_commit_of_this_repository(self):
        out = run("--version")
        self.assertEqual(out.returncode, 0)
        found = re.fullmatch(r"latentserve (\d+\.\d+\.\d+) \(git ([0-9a-f]{7,40})(-dirty)?\)\n", out.stdout)
        self.assertTrue(found, out.stdout)
        if shutil.which("git") and os.path.exists(os.path.join(SOURCE_DIR, ".git")):
            check = subprocess.run(["git", "-C", SOURCE_DIR, "cat-file", "-e", found.group(2) + "^{commit}"])
            self.assertEqual(check.returncode, 0, f"{found.group(2)} is not a commit of {SOURCE_DIR}")


class Docs(unittest.TestCase):
    def test_documented_command_lines_use_accepted_flags(self):
        accepted = {name: accepted_flags(name) for name in subcommands()}
        files = [os.path.join(SOURCE_DIR, "README.md")]
        docs = os.path.join(SOURCE_DIR, "docs")
        files += [os.path.join(docs, f) for f in sorted(os.listdir(docs)) if f.endswith(".md")]
        checked = 0
        for path in files:
            with open(path) as f:
                text = f.read()
            for found in re.finditer(r"latentserve ([a-z-]+)((?: +[^ |;&#`\n]+)*)", text):
                name, rest = found.group(1), found.group(2)
                if name not in accepted:
                    continue
                for flag in re.findall(r"(?:^| )--([a-z0-9-]+)", rest):
                    checked += 1
                    self.assertIn(flag, accepted[name], f"{os.path.basename(path)}: `latentserve {name} ...--{flag}`")
        self.assertGreater(checked, 20)


class ClientAgainstServe(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = ts.Cluster("cli", serve=True)

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def generate(self, *extra):
        out = run("client", "generate", "--target", self.cluster.router, "--json", "--ignore-eos", *extra, timeout=120)
        return ts.parse_result(out.stdout, out.returncode), out

    def test_unset_seed_is_random_and_reported_explicit_seed_reproduces(self):
        flags = ("--prompt", "The capital of", "--max-tokens", "12", "--temperature", "1.5")
        first, _ = self.generate(*flags)
        second, _ = self.generate(*flags)
        self.assertEqual((first["rc"], second["rc"]), (0, 0))
        self.assertNotEqual(first["seed"], second["seed"])
        again, _ = self.generate(*flags, "--seed", str(first["seed"]))
        self.assertEqual(again["seed"], first["seed"])
        self.assertEqual(again["token_ids"], first["token_ids"])

    def test_token_times_stamp_every_token_on_the_client_clock(self):
        before_ms = time.time() * 1e3
        timed, _ = self.generate("--prompt", "Once upon", "--max-tokens", "6", "--token-times")
        after_ms = time.time() * 1e3
        self.assertEqual(timed["rc"], 0, timed)
        timing, times = timed["timing"], timed["token_times_ms"]
        self.assertEqual(len(times), len(timed["token_ids"]))
        self.assertEqual(times, sorted(times))
        self.assertEqual(timing["client_first_token_ms"], times[0])
        self.assertLessEqual(times[-1], timing["client_end_ms"])
        self.assertLessEqual(before_ms, timing["client_start_unix_ms"])
        self.assertLessEqual(timing["client_start_unix_ms"] + timing["client_end_ms"], after_ms)
        plain, _ = self.generate("--prompt", "Once upon", "--max-tokens", "2")
        self.assertNotIn("token_times_ms", plain)  # the array only when asked
        self.assertGreater(plain["timing"]["client_first_token_ms"], 0)

    def test_every_stop_string_applies(self):
        full, _ = self.generate("--prompt", "Once upon", "--max-tokens", "24")
        text = full["text"]
        # ASCII runs: the random model's other tokens are byte pieces that print as U+FFFD.
        words = re.findall(r"[A-Za-z]{2,}", text)
        self.assertGreaterEqual(len(words), 2, full)
        early, late = words[0], words[-1]
        self.assertLess(text.find(early), text.find(late))
        # The earlier stop string comes first on the command line: keeping only the last flag
        # would cut at `late`.
        cut, _ = self.generate("--prompt", "Once upon", "--max-tokens", "24", "--stop", early, "--stop", late)
        self.assertEqual(cut["finish_reason"], "stop_string")
        self.assertEqual(cut["text"], text[:text.find(early)])

    def test_system_and_message_make_a_chat_prompt(self):
        plain, _ = self.generate("--message", "hello there", "--max-tokens", "2")
        with_system, _ = self.generate("--system", "Be brief.", "--message", "hello there", "--max-tokens", "2")
        self.assertEqual((plain["rc"], with_system["rc"]), (0, 0))
        self.assertGreater(with_system["usage"]["prompt_tokens"], plain["usage"]["prompt_tokens"])
        turns, _ = self.generate("--message", "hi", "--message", "assistant: hello", "--message", "more",
                                 "--max-tokens", "2")
        self.assertGreater(turns["usage"]["prompt_tokens"], plain["usage"]["prompt_tokens"] - 3)
        both = run("client", "generate", "--target", self.cluster.router, "--prompt", "x", "--message", "y")
        self.assertEqual(both.returncode, 2)
        self.assertIn("give one prompt", both.stderr)
        alone = run("client", "generate", "--target", self.cluster.router, "--system", "only a system turn")
        self.assertEqual(alone.returncode, 2)
        self.assertIn("--system needs at least one --message", alone.stderr)

    def test_tokenize_and_client_tokenize_print_the_same_key_and_ids(self):
        local = run("tokenize", "--model", ts.MODEL, "--text", "Hello world")
        remote = run("client", "tokenize", "--target", self.cluster.router, "--prompt", "Hello world")
        self.assertEqual((local.returncode, remote.returncode), (0, 0), local.stderr + remote.stderr)
        local_ids, remote_ids = json.loads(local.stdout)["token_ids"], json.loads(remote.stdout)["token_ids"]
        self.assertTrue(local_ids)
        self.assertEqual(local_ids, remote_ids[-len(local_ids):])  # the router may add BOS

    def test_client_stats_on_a_serve_port_says_what_to_do(self):
        out = run("client", "stats", "--target", self.cluster.router)
        self.assertEqual(out.returncode, 1)
        error = json.loads(out.stdout)["error"]
        self.assertEqual(error["code"], "UNIMPLEMENTED")
        self.assertIn("not a prefill or decode worker", error["message"])
        self.assertIn("client info --target", error["message"])


class MillionTokenContext(unittest.TestCase):
    """The gpu overlay's flags (--cache-tokens 1048576) on the CPU with the small model: the
    startup log carries the memory plan and `client info` the context."""

    def test_serve_with_a_million_token_cache_reports_it(self):
        c = ts.Cluster("million", serve=True, worker_flags=("--cache-tokens", "1048576"))
        try:
            self.assertEqual(c.info()["max_context_tokens"], 1048576)
            with open(os.path.join(c.dir, "serve.log")) as f:
                plans = [json.loads(line) for line in f if '"memory_plan"' in line]
            self.assertEqual(sorted(p["component"] for p in plans), ["decode", "prefill"])
            for plan in plans:
                self.assertEqual(plan["context_tokens"], 1048576)
                self.assertEqual(plan["level"], "info")
                self.assertGreater(plan["latent_cache_gib"], 0)
        finally:
            c.stop()


class BatchedGenerate(unittest.TestCase):
    """`generate --batch N` decodes N sequences in one forward a step: each row must be what
    `generate` makes alone for that row's prompt (the prompt rotated left by the row's index)."""

    def test_each_row_equals_its_prompt_generated_alone(self):
        prompt = [5, 6, 7, 8, 9, 10, 11, 12, 13]
        common = ("--model", ts.MODEL, "--max-tokens", "7", "--ids", "--ignore-eos", "--threads", "1")
        out = run("generate", *common, "--prompt-tokens", ",".join(map(str, prompt)), "--batch", "3")
        self.assertEqual(out.returncode, 0, out.stderr)
        rows = out.stdout.split()
        self.assertEqual(len(rows), 3, out.stdout)
        self.assertRegex(out.stderr, r"batch 3: .* 6 steps of 3 sequences, .* tok/s aggregate")
        for i, row in enumerate(rows):
            alone = run("generate", *common, "--prompt-tokens", ",".join(map(str, prompt[i:] + prompt[:i])))
            self.assertEqual(alone.returncode, 0, alone.stderr)
            self.assertEqual(row, alone.stdout.strip(), f"row {i}")
            self.assertEqual(len(row.split(",")), 7)

    def test_batch_out_of_range_is_refused(self):
        for bad in ("0", "-2", "1025"):
            out = run("generate", "--model", ts.MODEL, "--prompt-tokens", "1,2", "--batch", bad)
            self.assertNotEqual(out.returncode, 0)
            self.assertIn("--batch must be in [1, 1024]", out.stderr)


class Demo(unittest.TestCase):
    def test_demo_with_a_build_present_runs_no_apt_npm_or_cmake(self):
        build = os.path.dirname(os.path.dirname(ts.BIN))
        if not os.path.exists(os.path.join(build, "build.ninja")):
            self.skipTest(f"{build} is not a ninja build directory")
        fakes = os.path.join(ts.WORK, "fakes")
        os.makedirs(fakes, exist_ok=True)
        called = os.path.join(ts.WORK, "setup-called")
        for tool in ("apt-get", "apt", "npm", "cmake", "sudo"):  # fault injection: setup must not run
            with open(os.path.join(fakes, tool), "w") as f:
                f.write(f"#!/bin/sh\necho {tool} >> {called}\nexit 97\n")
            os.chmod(os.path.join(fakes, tool), 0o755)
        env = dict(os.environ, PATH=fakes + os.pathsep + os.environ["PATH"], BUILD_DIR=build, DEMO_TOKENS="256",
                   DEMO_ANSWER_TOKENS="12", DEMO_THREADS="1")
        out = subprocess.run([os.path.join(SOURCE_DIR, "scripts", "demo.sh")], env=env, capture_output=True,
                             text=True, timeout=150)
        self.assertEqual(out.returncode, 0, out.stdout[-2000:] + out.stderr[-2000:])
        self.assertFalse(os.path.exists(called), open(called).read() if os.path.exists(called) else "")


def main():
    def setup(args):
        global SOURCE_DIR
        SOURCE_DIR = os.path.abspath(args.source_dir)
    ts.run_suite("latentserve-cli-", options=("--source-dir",), setup=setup)

if __name__ == "__main__":
    main()
