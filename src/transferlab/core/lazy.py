"""Package attributes imported on first use (PEP 562), so that `import transferlab` and the CLI's
`--help` do not pay for torch until something needs it."""
from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """(__getattr__, __dir__) for a package whose public names live in submodules: name -> submodule.

    Submodules are never named like the functions they export (trainer.train, not train.train):
    importing a submodule sets the package attribute of its name, which would hide the function.
    """

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        globals_of_package = importlib.import_module(package).__dict__
        globals_of_package[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(exports))

    return __getattr__, __dir__
