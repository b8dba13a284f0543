"""A real `latentserve serve` on loopback for the SDK tests (LATENTSERVE_BIN: the binary)."""
import json
import os
import subprocess
import tempfile
import time

import pytest

BIN = os.environ.get("LATENTSERVE_BIN", "")


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Serve:
    """One `serve` process; .target is its gRPC address, .log its output (JSON event lines)."""

    def __init__(self, directory, model, *flags):
        self.dir = directory
        self.port_file = os.path.join(directory, "grpc.port")
        self.http_port_file = os.path.join(directory, "http.port")
        self.log = os.path.join(directory, "serve.log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--port-file", self.port_file,
                                          "--model", model, "--threads", "1", "--chunk", "64", *flags],
                                         stdout=log, stderr=subprocess.STDOUT)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}: {open(self.log).read()}")
            return os.path.exists(self.port_file)
        wait_for(ready, 60, "serve to listen")
        self.target = open(self.port_file).read().strip()

    def events(self, request_id):
        out = []
        for line in open(self.log, errors="replace"):
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("request_id") == request_id:
                    out.append(event)
        return out

    def stop(self):
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="session")
def workdir():
    with tempfile.TemporaryDirectory(prefix="latentserve-sdk-") as directory:
        yield directory


@pytest.fixture(scope="session")
def model(workdir):
    if not BIN:
        pytest.fail("set LATENTSERVE_BIN to the latentserve binary")
    path = os.path.join(workdir, "m.gguf")
    subprocess.run([BIN, "make-test-model", "--out", path, "--context", "8192", "--seed", "7"], check=True,
                   capture_output=True, timeout=120)
    return path


@pytest.fixture(scope="session")
def serve(workdir, model):
    directory = os.path.join(workdir, "plain")
    os.makedirs(directory)
    server = Serve(directory, model)
    yield server
    server.stop()
