#!/usr/bin/env python3
"""Regenerate nbgateway/_proto/ from the .proto files in this directory.

Usage::

    python proto/generate.py            # writes nbgateway/_proto/*_pb2*.py(i)
    python proto/generate.py --out DIR  # writes into DIR instead (used by tests)

Runs protoc from grpcio-tools (``grpc_tools.protoc``) with its bundled
well-known types, then rewrites the generated sibling imports
(``import proxy_service_pb2``) to package-relative ones
(``from . import proxy_service_pb2``) so the code works as the
``nbgateway._proto`` package.  The output is committed; a fresh clone needs no
generation step.  ``tests/test_proto_generated.py`` checks that the committed
files equal a fresh run of this script.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUT = REPO / "nbgateway" / "_proto"

#: The .proto files we compile, in a fixed order (output is deterministic).
PROTOS = ("proxy_service.proto", "management.proto")

#: Generated module stems; imports of these are made package-relative.
MODULES = tuple(p[: -len(".proto")] + "_pb2" for p in PROTOS)

_SIBLING_IMPORT = re.compile(
    r"^import (" + "|".join(re.escape(m) for m in MODULES) + r") as (\w+)$", re.M
)


def generated_names() -> list[str]:
    """File names (no directory) this script writes."""
    names = []
    for proto in PROTOS:
        stem = proto[: -len(".proto")]
        names += [f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"]
    return names


def fix_imports(source: str) -> str:
    """Rewrite ``import x_pb2 as y`` for our own modules to ``from . import``."""
    return _SIBLING_IMPORT.sub(r"from . import \1 as \2", source)


def generate(out: Path) -> list[Path]:
    """Compile every proto into ``out``; return the paths written."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nbgw-protoc-") as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{HERE}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(HERE / p) for p in PROTOS),
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit status {rc}")
        written = []
        for name in generated_names():
            text = (Path(tmp) / name).read_text(encoding="utf-8")
            target = out / name
            target.write_text(fix_imports(text), encoding="utf-8")
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ns = parser.parse_args(argv)
    for path in generate(ns.out):
        print(os.path.relpath(path, os.getcwd()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
