"""The package installs as docs/mcp.md says (`pip install ./clients/python`)
and ships its type information."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def test_pip_install_builds_a_typed_package(tmp_path: Path) -> None:
    target = tmp_path / "site"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(HERE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    pkg = target / "tessera_client"
    assert (pkg / "py.typed").exists()
    probe = subprocess.run(
        [sys.executable, "-c", "import tessera_client, sys; print(tessera_client.__file__); print(sorted(tessera_client.__all__))"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "PATH": ""},
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert str(pkg) in probe.stdout
    assert "TesseraAuth" in probe.stdout and "mcp_http_client" in probe.stdout
