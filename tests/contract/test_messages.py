"""The contract's message modules and `messages.py`, the one import for them all: every struct a module defines
is in its `__all__`, so it can be imported from `service.contract.messages`, and no name is defined twice."""

from __future__ import annotations

import importlib

import msgspec
import pytest

from service.contract import messages

MODULES = ["values", "requests", "replies", "envelopes", "events"]


@pytest.mark.parametrize("name", MODULES)
def test_every_struct_a_module_defines_is_exported(name: str) -> None:
    module = importlib.import_module(f"service.contract.{name}")
    defined = {
        key
        for key, value in vars(module).items()
        if not key.startswith("_")
        and isinstance(value, type)
        and issubclass(value, msgspec.Struct | str)
        and value.__module__ == module.__name__
    }
    exported = set(module.__all__)
    assert defined <= exported, f"service/contract/{name}.py: add {sorted(defined - exported)} to its __all__"
    assert all(getattr(messages, key) is getattr(module, key) for key in exported)


def test_no_name_is_exported_by_two_modules() -> None:
    names = [key for name in MODULES for key in importlib.import_module(f"service.contract.{name}").__all__]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
