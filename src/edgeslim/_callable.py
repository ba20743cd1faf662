"""Let a subpackage double as the function it is named after.

``edgeslim.prune`` is both the package ``edgeslim/prune/`` (``edgeslim.prune.admm``)
and the public function ``edgeslim.prune(model, ...)``. Python binds the package
as the attribute once it is imported, so the package object itself is made
callable (forwarding to the function, with its signature and docstring).
"""
from __future__ import annotations

import inspect
import sys
import types
from typing import Any


def make_callable(module_name: str, function_name: str) -> None:
    module = sys.modules[module_name]
    fn = getattr(module, function_name)

    class CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(self, function_name)(*args, **kwargs)

    CallableModule.__name__ = f"{function_name}_module"
    module.__class__ = CallableModule
    module.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    module.__doc__ = f"{module.__doc__ or ''}\n\nCalling this package calls ``{function_name}``:\n\n{fn.__doc__ or ''}"
