"""Regenerate the Python protobuf and gRPC code from ``proto/``: ``python proto/generate.py``.

The generated modules are committed under ``tollway/v1/`` so that installing tollway needs
no code generator; ``tests/test_proto_fresh.py`` fails when they fall behind the ``.proto``.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
SOURCES = ("tollway/v1/tollway.proto",)


def include_dir() -> str:
    """Where grpc_tools keeps the well-known types (google/protobuf/*.proto)."""
    return str(resources.files("grpc_tools") / "_proto")


def main() -> int:
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include_dir()}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *SOURCES,
    ]
    code = protoc.main(args)
    if code != 0:
        print(f"protoc failed with exit code {code}", file=sys.stderr)
        return 1
    init = ROOT / "tollway" / "v1" / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated protobuf and gRPC code for tollway.v1."""\n')
    print("generated tollway/v1/tollway_pb2.py, tollway_pb2.pyi, tollway_pb2_grpc.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
