"""Generate the Python code for protos/egw/v1/*.proto exactly as integrators are told to.

The .proto files import each other as ``egw/v1/…`` with ``protos/`` as the include root
(``protoc -I protos``), which is what docs/grpc.md tells every other language to use. protoc
then writes ``from egw.v1 import …`` into the Python code; in this repository the package is
``protos.egw.v1`` (no top-level ``egw`` package may exist beside ``gateway``), so the imports
are rewritten. Run by ``scripts/gen-protos`` and by the drift test, so both produce the same bytes.

    python scripts/gen_protos.py [OUT_ROOT]   # default: the repository; OUT_ROOT/protos/egw/v1/
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = REPO / "protos"
_IMPORT = re.compile(rb"^from egw\.v1 import ", re.MULTILINE)


def generate(out_root: Path) -> list[Path]:
    """Write the *_pb2*.py(i) of every egw/v1 proto under ``out_root/protos``; return the files written."""
    target = out_root / "protos"
    (target / "egw" / "v1").mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(SOURCES)) for p in (SOURCES / "egw" / "v1").glob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(SOURCES), f"--python_out={target}",
         f"--grpc_python_out={target}", f"--pyi_out={target}", *protos],
        check=True,
    )
    written = sorted(p for p in (target / "egw" / "v1").iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")))
    for path in written:
        path.write_bytes(_IMPORT.sub(b"from protos.egw.v1 import ", path.read_bytes()))
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO):
        print(path)
