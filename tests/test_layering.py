"""The allowed dependency graph of nbgateway/ (imports parsed with ``ast``).

Packages (and top-level modules) sit on floors in data-flow order, the
service model (:mod:`nbgateway.routes`) on the ground floor.  A package may
import only the packages listed for it in :data:`ALLOWED`, and every listed
edge points to a lower floor, so the package graph has no cycle.  A new
import that is not listed -- a back edge above all -- fails here; list it
only if it points down.  Module-level cycles (runtime imports; imports under
``if TYPE_CHECKING:`` are type-only and do not count) are allowed only where
:data:`MODULE_CYCLES` lists them.  docs/architecture.md describes the floors.
"""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "nbgateway"

#: data-flow order, lowest first (a package imports only from lower floors)
FLOORS: dict[str, int] = {
    # generated protocol code
    "_proto": 0,
    # ground: shared vocabulary and the service model
    "__version__": 1, "errors": 1, "durations": 1, "interfaces": 1, "peerbox": 1, "cabundle": 1,
    "startup": 1, "routes": 1, "attempts": 1, "heapfreeze": 1, "netaddr": 1,
    "portranges": 1, "atomicfile": 1,
    # packets and stored state
    "netstack": 2, "store": 2,
    # tunnels, dialers, the management client
    "wireguard": 3, "dial": 3, "mgmt": 3, "tunnels": 3,
    # request handling pieces, observation, settings
    "dns": 4, "auth": 4, "proxy": 4, "observe": 4, "config": 4, "tls": 4,
    # the front resource, certificates, per-account runtimes, option parsing
    "http": 5, "acme": 5, "accounts": 5, "options": 5,
    # L4 relays (TCP, TLS by SNI, UDP), beside the front resource
    "l4": 5,
    # composition roots
    "management": 6, "service": 6, "embedded": 7, "tap": 8,
}

#: the only package -> package imports there may be
ALLOWED: dict[str, set[str]] = {
    "routes": {"_proto"},
    "netstack": {"interfaces"},
    "store": {"_proto", "interfaces", "routes"},
    "wireguard": {"interfaces", "netstack"},
    "dial": {"errors", "netaddr", "netstack"},
    "mgmt": {"_proto", "errors", "interfaces", "netstack", "peerbox"},
    "tunnels": {"netstack"},
    "dns": {"mgmt", "netstack"},
    "auth": {"attempts", "cabundle", "routes"},
    "proxy": {"dial", "routes"},
    "observe": {"_proto", "mgmt", "routes", "startup"},
    "config": {"dial", "durations", "mgmt", "portranges"},
    "tls": {"atomicfile", "routes"},
    "http": {"auth", "observe", "proxy", "routes"},
    "acme": {"_proto", "atomicfile", "startup", "store", "tls"},
    "l4": {"_proto", "auth", "dial", "errors", "interfaces", "netstack", "observe", "proxy",
           "routes"},
    "accounts": {"_proto", "mgmt", "netstack", "routes", "store", "wireguard"},
    "options": {"config", "startup"},
    "management": {"__version__", "_proto", "atomicfile", "attempts", "cabundle", "heapfreeze",
                   "netaddr", "observe", "options", "peerbox", "portranges", "startup", "tls"},
    "service": {"_proto", "accounts", "acme", "atomicfile", "auth", "dial", "dns", "http", "l4",
                "mgmt", "netstack",
                "observe", "proxy", "routes", "startup", "store", "tls", "tunnels",
                "wireguard"},
    "embedded": {"dial", "management"},
    "tap": {"__version__", "dial", "embedded", "heapfreeze", "mgmt", "observe", "options",
            "service"},
}

#: back edges that exist today and are NOT allowed to spread: (from, to) ->
#: where and why.  Each must stay a function-level (lazy) import; remove the
#: entry when the import goes away.
KNOWN_BACK_EDGES: dict[tuple[str, str], str] = {
    ("tls", "acme"): "tls/contexts.py imports acme.challenges.tls_alpn_context inside the "
                     "ALPN callback (tls-alpn-01); to be inverted: acme hands tls a callback",
}

#: module cycles that are allowed (sets of module names), with the reason
MODULE_CYCLES: dict[frozenset[str], str] = {
    frozenset({"nbgateway.acme.challenges", "nbgateway.tls.contexts"}):
        "the KNOWN_BACK_EDGES tls -> acme entry (lazy import)",
    frozenset({f"nbgateway.management.store{m}" for m in (
        "", "._accesslog", "._accounts", "._base", "._proxies", "._services")}):
        "the management Store assembled from mixins that import the package for shared "
        "types; being split into repositories (management's own layout)",
    frozenset({"nbgateway.management.ui.pages", "nbgateway.management.ui.resource"}):
        "the dashboard's page table and resource refer to each other (management's own)",
    frozenset({"nbgateway.management.cli._completion", "nbgateway.management.cli._main"}):
        "shell completion walks the argument parser that offers it (management's own)",
}


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    return skip


@functools.cache
def imports(module: str) -> list[tuple[str, bool, bool]]:
    """``(imported nbgateway module or root name, lazy, type_only)`` for ``module``."""
    path, is_pkg = MODULES[module]
    tree = ast.parse(path.read_text())
    type_only = _type_checking_nodes(tree)
    top_level = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        lazy = id(node) not in top_level and id(node) not in type_only
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = []
            for alias in node.names:
                full = f"{prefix}.{alias.name}"
                names.append(full if full in MODULES else prefix)
        else:
            continue
        for name in names:
            if name == "nbgateway" and isinstance(node, ast.ImportFrom):
                name = "nbgateway.__version__" if any(
                    a.name == "__version__" for a in node.names) else name
            if name.split(".")[0] == "nbgateway":
                target = name if name.endswith("__version__") else _resolve(name)
                if target:
                    out.append((target, lazy, id(node) in type_only))
    return out


def unit(module: str) -> str | None:
    """The package (or top-level module) a module belongs to; None for the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def package_edges() -> dict[tuple[str, str], list[tuple[str, bool]]]:
    edges: dict[tuple[str, str], list[tuple[str, bool]]] = defaultdict(list)
    for module in MODULES:
        src = unit(module)
        if src is None or src == "_proto":
            continue
        for target, lazy, _type_only in imports(module):
            dst = unit(target)
            if dst is not None and dst != src:
                edges[(src, dst)].append((module, lazy))
    return edges


def test_every_package_has_a_floor():
    units = {unit(m) for m in MODULES} - {None}
    assert units - set(FLOORS) == set(), "new package: give it a floor and its ALLOWED edges"


def test_allowed_edges_point_down_so_packages_have_no_cycle():
    for src, dsts in ALLOWED.items():
        for dst in dsts:
            assert FLOORS[dst] < FLOORS[src], f"{src} -> {dst} is not data-flow order"


def violations(edges: dict[tuple[str, str], list[tuple[str, bool]]]) -> list[str]:
    """Package imports outside :data:`ALLOWED` (known back edges only if lazy)."""
    bad = []
    for (src, dst), where in sorted(edges.items()):
        if dst in ALLOWED.get(src, set()):
            continue
        if (src, dst) in KNOWN_BACK_EDGES and all(lazy for _m, lazy in where):
            continue
        bad.append(f"{src} -> {dst} ({', '.join(sorted({m for m, _ in where}))})")
    return bad


def test_only_allowed_package_imports():
    bad = violations(package_edges())
    assert bad == [], "imports outside the allowed graph:\n" + "\n".join(bad)


def test_a_back_edge_would_be_caught():
    edges = package_edges()
    edges[("routes", "http")].append(("nbgateway.routes.table", False))
    edges[("tls", "acme")].append(("nbgateway.tls.certstore", False))  # made eager
    assert violations(edges) == [
        "routes -> http (nbgateway.routes.table)",
        "tls -> acme (nbgateway.tls.certstore, nbgateway.tls.contexts)",
    ]


def test_routes_is_the_ground_floor_service_model():
    for module in MODULES:
        if unit(module) != "routes":
            continue
        path, _ = MODULES[module]
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith("twisted.web"), (module, name)
                assert name != "twisted.internet.reactor", (module, name)
                assert not (name.startswith("twisted.internet")
                            and any(a.name == "reactor" for a in node.names)), module


def runtime_module_graph() -> dict[str, set[str]]:
    return {m: {t for t, _lazy, type_only in imports(m) if not type_only and t != m
                and t in MODULES} for m in MODULES}


def module_cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[frozenset[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return found


def test_module_cycles_only_where_listed():
    unlisted = [sorted(c) for c in module_cycles(runtime_module_graph())
                if not any(c <= allowed for allowed in MODULE_CYCLES)]
    assert unlisted == [], f"new module import cycle(s): {unlisted}"


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert module_cycles(graph) == [frozenset({"a", "b", "c"})]
    # a type-only import is not an edge: tcp_conn names tcp's types under TYPE_CHECKING
    runtime = runtime_module_graph()
    assert "nbgateway.netstack.tcp_conn" in runtime["nbgateway.netstack.tcp"]
    assert "nbgateway.netstack.tcp" not in runtime["nbgateway.netstack.tcp_conn"]
