"""Generates the gRPC stubs from the public proto while building (pyproject.toml has the rest).

The stubs come from ../../proto/latentserve/v1/generate.proto (LATENTSERVE_PROTO_DIR to point
elsewhere) with protoc and grpc_python_plugin (Debian: protobuf-compiler, protobuf-compiler-grpc).
Only the public API is generated: the internal worker protos are not part of a client.
"""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithStubs(build_py):
    def run(self):
        proto_dir = os.environ.get("LATENTSERVE_PROTO_DIR", os.path.join(HERE, "..", "..", "proto"))
        proto = os.path.join(proto_dir, "latentserve", "v1", "generate.proto")
        if not os.path.exists(proto):
            raise SystemExit(f"latentserve: {proto} not found; install from a latentserve checkout "
                             "(pip install --no-build-isolation ./sdk/python) or set LATENTSERVE_PROTO_DIR")
        protoc = shutil.which("protoc")
        plugin = shutil.which("grpc_python_plugin")
        if not protoc or not plugin:
            raise SystemExit("latentserve: protoc and grpc_python_plugin are needed "
                             "(apt-get install protobuf-compiler protobuf-compiler-grpc)")
        out = os.path.join(HERE)  # latentserve/v1/generate_pb2*.py next to the package sources
        subprocess.run([protoc, f"--proto_path={proto_dir}", f"--python_out={out}", f"--pyi_out={out}",
                        f"--grpc_python_out={out}", f"--plugin=protoc-gen-grpc_python={plugin}",
                        "latentserve/v1/generate.proto"], check=True)
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
