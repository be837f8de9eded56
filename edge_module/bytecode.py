"""Write bytecode for what the module imports, in an image whose installed files are read-only at run time.

Precompiling every installed file adds about 14 MB of bytecode that is never read; importing writes exactly the
``.pyc`` files a running module reads. The image build runs this twice, once per layer, so that a source change
never rebuilds the dependencies' bytecode:

- ``python bytecode.py --dependencies`` (a copy of this file, before the source exists) imports every installed
  distribution's packages and the submodules the module loads lazily;
- ``python -m edge_module.bytecode`` imports every ``edge_module`` submodule, which also proves that each one
  imports with the edge dependencies alone.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import sys
from pathlib import PurePosixPath

# Loaded inside functions or by name at run time, so importing the packages does not reach them.
LAZY_IMPORTS = (
    "uvloop",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "cryptography.hazmat.primitives.serialization",
    "azure.iot.device.aio",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.lifespan.off",
)


def package_roots(files: list[PurePosixPath]) -> set[str]:
    """The importable top-level names in a distribution's files; a namespace package's regular subpackages."""
    present = set(files)
    roots: set[str] = set()
    for path in files:
        if path.suffix != ".py" or path.parts[0] == ".." or path.parts[0].endswith((".dist-info", ".data")):
            continue
        parts = path.with_suffix("").parts
        for depth in range(1, len(parts) + 1):
            if depth == len(parts) or PurePosixPath(*parts[:depth], "__init__.py") in present:
                roots.add(".".join(parts[:depth]))
                break
    return {root for root in roots if all(part.isidentifier() for part in root.split("."))}


def installed_roots() -> list[str]:
    roots: set[str] = set()
    for dist in importlib.metadata.distributions():
        roots |= package_roots([PurePosixPath(str(f)) for f in dist.files or ()])
    return sorted(roots)


def _import_all(names: list[str], strict: bool) -> list[str]:
    failures = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a third-party module with an optional extra we do not install
            if strict:
                raise
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    return failures


def main(argv: list[str]) -> int:
    sys.dont_write_bytecode = False  # the image sets PYTHONDONTWRITEBYTECODE for run time, not for this
    if argv == ["--dependencies"]:
        failures = _import_all(installed_roots(), strict=False) + _import_all(list(LAZY_IMPORTS), strict=True)
        for failure in failures:
            sys.stdout.write(f"not imported (its bytecode is compiled on use): {failure}\n")
    elif not argv:
        import edge_module

        names = [info.name for info in pkgutil.walk_packages(edge_module.__path__, "edge_module.")]
        _import_all(names, strict=True)
    else:
        sys.stderr.write("usage: python -m edge_module.bytecode [--dependencies]\n")
        return 2
    sys.stdout.write(f"bytecode written for {len(sys.modules)} modules\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
