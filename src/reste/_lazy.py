"""Names of a package imported on first use (PEP 562), so importing one of its modules stays light."""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable


def lazy_names(package: str, sources: dict[str, tuple[str, ...]], namespace: dict[str, Any],
               modules: tuple[str, ...] = ()) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: each name in ``sources[module]`` is
    ``package.module.name``, imported when first asked for and then kept in ``namespace``; each of ``modules`` is
    the sub-module ``package.name``, imported when first asked for (``import reste; reste.models``)."""
    module_of = {name: module for module, names in sources.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in modules:
            value = import_module(f".{name}", package)
            namespace[name] = value
            return value
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *module_of, *modules})

    return __getattr__, __dir__
