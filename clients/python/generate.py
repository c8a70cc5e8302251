#!/usr/bin/env python3
"""Generates Python gRPC stubs for bertd from proto/ alone (grpcio-tools' bundled protoc).

usage: generate.py [OUT_DIR]    (default: clients/python/gen; then `sys.path.insert(0, OUT_DIR)`)
"""
import sys
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO = HERE.parents[1] / "proto"


def generate(out: Path) -> Path:
    """Writes bert/v1/*_pb2.py and *_pb2_grpc.py (and google/rpc) under `out`; returns `out`."""
    out.mkdir(parents=True, exist_ok=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO)) for p in sorted(PROTO.rglob("*.proto"))]
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO}", f"-I{well_known}",
                        f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if code != 0:
        raise SystemExit(f"protoc failed with {code}")
    return out


if __name__ == "__main__":
    print(generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "gen"))
