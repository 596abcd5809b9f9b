"""The committed nbgateway/_proto/ equals a fresh run of proto/generate.py.

Only the generator-version lines may differ (a different grpcio-tools release
stamps its own protobuf/grpc version into the header and runtime checks).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO / "proto"
COMMITTED = REPO / "nbgateway" / "_proto"

pytest.importorskip("grpc_tools", reason="grpcio-tools (test extra) not installed")

_VERSION_LINES = re.compile(
    r"^(# Protobuf Python Version: .*"
    r"|GRPC_GENERATED_VERSION = .*"
    r"|_runtime_version\.ValidateProtobufRuntimeVersion\((?:\n[^\n]*)*?\n\))$",
    re.M,
)


def _load_generator():
    spec = importlib.util.spec_from_file_location("nbgw_proto_generate", PROTO_DIR / "generate.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _normalise(text: str) -> str:
    return _VERSION_LINES.sub("<generator version>", text)


def test_committed_generated_code_matches_fresh_generation(tmp_path: Path) -> None:
    generator = _load_generator()
    written = generator.generate(tmp_path)
    assert sorted(p.name for p in written) == sorted(generator.generated_names())
    for path in written:
        committed = COMMITTED / path.name
        assert committed.exists(), f"{committed} missing: run python proto/generate.py"
        fresh_text = path.read_text(encoding="utf-8")
        committed_text = committed.read_text(encoding="utf-8")
        if fresh_text != committed_text:
            assert _normalise(fresh_text) == _normalise(committed_text), (
                f"{path.name} is stale: run python proto/generate.py and commit"
            )


def test_generated_imports_are_package_relative() -> None:
    for name in ("proxy_service_pb2_grpc.py", "management_pb2_grpc.py"):
        text = (COMMITTED / name).read_text(encoding="utf-8")
        assert re.search(r"^from \. import \w+_pb2 as \w+$", text, re.M), name
        assert not re.search(r"^import \w+_pb2 as", text, re.M), name


def test_version_normalisation_only_hides_version_lines() -> None:
    text = (COMMITTED / "proxy_service_pb2.py").read_text(encoding="utf-8")
    normalised = _normalise(text)
    assert "<generator version>" in normalised
    assert "ValidateProtobufRuntimeVersion" not in normalised
    # Everything else survives, e.g. the serialized descriptor.
    assert "AddSerializedFile" in normalised
