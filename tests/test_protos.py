"""Generated code must match the .proto files: regenerate and compare byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "aigw" / "v1").glob("*.proto"))
    assert sources, "no .proto files found"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *sources,
        ],
        check=True,
        cwd=PROTOS,
    )

    def generated(root: Path) -> dict[Path, bytes]:
        return {
            p.relative_to(root): p.read_bytes()
            for p in root.rglob("*_pb2*")
            if p.suffix in (".py", ".pyi") and "__pycache__" not in p.parts
        }

    fresh, committed = generated(tmp_path), generated(PROTOS)
    assert fresh.keys() == committed.keys(), "generated files differ in name: run `make protos`"
    stale = sorted(str(name) for name in fresh if fresh[name] != committed[name])
    assert not stale, f"stale generated code {stale}: run `make protos`"
