"""The committed generated code matches ``proto/``: run ``python proto/generate.py`` if not.

Compares descriptors, not files: file headers change with the generator's version while
the wire contract does not.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc  # type: ignore[import-untyped]

from tollway.dsl.ast import REASONS
from tollway.v1 import tollway_pb2, tollway_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
PROTO = "tollway/v1/tollway.proto"


def _generate_module() -> object:
    spec = importlib.util.spec_from_file_location("_generate", ROOT / "proto" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / "set.pb"
    code = protoc.main([
        "grpc_tools.protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{_generate_module().include_dir()}",  # type: ignore[attr-defined]
        f"--descriptor_set_out={out}",
        PROTO,
    ])
    assert code == 0, "protoc could not compile the .proto"
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return next(f for f in files if f.name == PROTO)


def _normalize(fd: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """Drop what the Python generator leaves out of its embedded copy (json names, comments)."""
    fd.ClearField("source_code_info")

    def strip(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for m in messages:
            for f in (*m.field, *m.extension):
                f.ClearField("json_name")
            strip(m.nested_type)

    strip(fd.message_type)
    return fd


def test_generated_descriptor_matches_the_proto(tmp_path: Path) -> None:
    fresh = _normalize(_compile(tmp_path))
    committed = _normalize(
        descriptor_pb2.FileDescriptorProto.FromString(tollway_pb2.DESCRIPTOR.serialized_pb)
    )
    if fresh != committed:
        pytest.fail(
            "tollway/v1/tollway_pb2.py is stale: run `python proto/generate.py`\n"
            f"--- committed\n{committed}\n--- fresh\n{fresh}"[:4000]
        )


def test_generated_stub_has_every_rpc() -> None:
    service = tollway_pb2.DESCRIPTOR.services_by_name["Tollway"]
    servicer = tollway_pb2_grpc.TollwayServicer
    missing = [m.name for m in service.methods if not hasattr(servicer, m.name)]
    assert not missing, f"tollway_pb2_grpc.py is stale (missing {missing}): run proto/generate.py"
    stub_source = (ROOT / "tollway" / "v1" / "tollway_pb2_grpc.py").read_text()
    for m in service.methods:
        assert f"'/tollway.v1.Tollway/{m.name}'" in stub_source


def test_pyi_is_present() -> None:
    pyi = ROOT / "tollway" / "v1" / "tollway_pb2.pyi"
    assert pyi.exists()
    text = pyi.read_text()
    for name in tollway_pb2.DESCRIPTOR.message_types_by_name:
        assert f"class {name}(" in text, f"{name} missing from tollway_pb2.pyi"


def test_the_languages_reasons_are_the_protos() -> None:
    """``Reason`` is written once in the DSL (``expect reason …``, ``Decision.reason``) and
    must name exactly the proto enum's values."""
    assert set(REASONS) == set(tollway_pb2.Reason.keys()) - {"REASON_UNSPECIFIED"}


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
