"""Lazy package namespaces (PEP 562), as diffusers does: a package maps each public name to the submodule that
defines it and imports that submodule on first access, so `import diffusers_spectrum` costs nothing and
`from diffusers_spectrum import esm_loss` loads the spectral maths only (not diffusers, transformers or datasets)."""

import importlib
import importlib.util


def lazy_namespace(package: str, table: dict[str, str | tuple[str, str]], namespace: dict):
    """`(__getattr__, __dir__)` for the package `package` whose public names are `table`: name -> module (absolute,
    or relative to `package`) or `(module, attribute)` for a renamed export. A name resolved once is stored in the
    package's `namespace` (its `globals()`), so later lookups are plain attribute reads. Other submodules of the
    package are imported on attribute access too (`package.submodule`); anything else is an `AttributeError`, as
    `getattr(package, name, default)` expects."""

    def __getattr__(name: str):
        if name in table:
            entry = table[name]
            module_name, attribute = entry if isinstance(entry, tuple) else (entry, name)
            value = getattr(importlib.import_module(module_name, package), attribute)
        elif not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
