"""No method call on an *imported* object in the request path's modules.

CPython 3.11 compiles ``NAME.method(...)`` as a method call (``LOAD_METHOD``,
specialised, no bound method made) unless ``NAME`` comes from an import
statement: then it is an attribute read (``LOAD_ATTR``, never specialised for
a builtin method: a generic lookup and a bound method made and freed per
call) followed by the call.  For a module (``sockwrite.write``) that is the
intended, specialised module-attribute read; for an imported dict or object
(``_NAMES.get`` with ``_NAMES`` from ``http11_wire``) it cost ~480
instructions per call.  Such objects are bound once at module level
(``_name_of = _NAMES.get``) or read into a local first."""

from __future__ import annotations

import dis
import importlib
import itertools
import types

import pytest

MODULES = [
    "nbgateway.proxy.fast", "nbgateway.proxy.fast_request", "nbgateway.proxy.exchange",
    "nbgateway.proxy.reverse", "nbgateway.proxy.headers", "nbgateway.proxy.plan",
    "nbgateway.dial.http11", "nbgateway.dial.http11_conn", "nbgateway.dial.http11_wire",
    "nbgateway.dial.deadlines", "nbgateway.dial.pool", "nbgateway.dial.sockwrite",
    "nbgateway.http.site",
]


def _codes(module: types.ModuleType):
    """Every code object defined in ``module`` (functions, methods, nested)."""
    stack = [module.__dict__[name] for name in vars(module)]
    seen: set[int] = set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, type) and obj.__module__ == module.__name__:
            stack.extend(vars(obj).values())
        elif isinstance(obj, (staticmethod, classmethod)):
            stack.append(obj.__func__)
        elif isinstance(obj, property):
            stack.extend(f for f in (obj.fget, obj.fset) if f is not None)
        elif isinstance(obj, types.FunctionType) and obj.__module__ == module.__name__:
            code_stack = [obj.__code__]
            while code_stack:
                code = code_stack.pop()
                yield code
                code_stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))


def _imported_method_calls(module: types.ModuleType) -> list[str]:
    found = []
    for code in _codes(module):
        instructions = list(dis.get_instructions(code))
        for first, second in itertools.pairwise(instructions):
            if first.opname != "LOAD_GLOBAL" or second.opname != "LOAD_ATTR":
                continue
            target = module.__dict__.get(first.argval)
            if target is None or isinstance(target, (types.ModuleType, type)):
                continue  # a module's attribute, a class's (classmethod, constant)
            attr = getattr(target, second.argval, None)
            if callable(attr) and not isinstance(attr, type):
                found.append(f"{code.co_name} line {second.positions.lineno}: "
                             f"{first.argval}.{second.argval}")
    return found


@pytest.mark.parametrize("name", MODULES)
def test_no_method_call_on_an_imported_object(name):
    assert _imported_method_calls(importlib.import_module(name)) == []


def test_the_check_finds_one():
    module = types.ModuleType("probe")
    exec("from nbgateway.dial.http11_wire import _NAMES\n"
         "def f(name):\n    return _NAMES.get(name)\n", module.__dict__)
    module.f.__module__ = "probe"
    assert _imported_method_calls(module) == ["f line 3: _NAMES.get"]
