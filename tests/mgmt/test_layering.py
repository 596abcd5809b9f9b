"""The gateway's management client and the management server share only ground-floor modules.

``nbgateway/mgmt/`` (the gateway's client side) must not import
``nbgateway/management/`` (the server) and the server must not import the
gateway's client or data plane; what both need (the peer channel's NaCl box
envelope) lives in :mod:`nbgateway.peerbox`, which imports neither.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import nbgateway

ROOT = Path(nbgateway.__file__).resolve().parent

#: gateway-side packages the management server must not import
GATEWAY_PACKAGES = ("mgmt", "http", "proxy", "wireguard", "netstack", "dns", "auth", "dial")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _offenders(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in files:
        for name in sorted(_imported_modules(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


def test_mgmt_client_does_not_import_the_management_server() -> None:
    files = sorted((ROOT / "mgmt").rglob("*.py"))
    assert files
    assert _offenders(files, ("nbgateway.management",)) == []


def test_management_server_does_not_import_the_gateway_side() -> None:
    files = sorted((ROOT / "management").rglob("*.py"))
    assert files
    forbidden = tuple(f"nbgateway.{p}" for p in GATEWAY_PACKAGES)
    assert _offenders(files, forbidden) == []


def test_peerbox_is_ground_floor() -> None:
    names = _imported_modules(ROOT / "peerbox.py")
    assert [n for n in names if n.startswith("nbgateway")] == []


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from nbgateway.management.crypto_box import ServerKey\n"
        "def f():\n    import nbgateway.mgmt.client\n",
        encoding="utf-8",
    )
    names = _imported_modules(bad)
    assert "nbgateway.management.crypto_box" in names
    assert "nbgateway.mgmt.client" in names


def test_importing_the_peer_client_loads_no_management_server_module() -> None:
    code = (
        "import sys, nbgateway.mgmt.peerclient, nbgateway.mgmt.client\n"
        "print(sorted(m for m in sys.modules if m.startswith('nbgateway.management')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
