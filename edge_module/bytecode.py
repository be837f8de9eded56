"""Write bytecode for what the module imports, in an image whose installed files are read-only at run time.

Precompiling every installed file adds about 14 MB of bytecode that is never read; importing writes exactly the
``.pyc`` files a running module reads. The image build runs this twice, once per layer, so that a source change
never rebuilds the dependencies' bytecode:

- ``python bytecode.py --dependencies`` (a copy of this file, before the source exists) imports the packages of
  the direct dependencies and the submodules the module loads lazily;
- ``python -m edge_module.bytecode`` imports every ``edge_module`` submodule, which also proves that each one
  imports with the edge dependencies alone.
"""

from __future__ import annotations

import compileall
import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath

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


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def top_level_distributions() -> list[importlib.metadata.Distribution]:
    """Installed distributions that no other one requires: the edge's direct dependencies.

    Importing their packages reaches everything the module can import, and leaves out what they import only on
    demand (protobuf for onnxruntime's offline tools, pycparser for cffi's compiler).
    """
    dists = {_canonical(dist.metadata["Name"]): dist for dist in importlib.metadata.distributions()}
    required: set[str] = set()
    for dist in dists.values():
        for requirement in dist.requires or ():
            if "extra ==" not in requirement.replace('"', "").replace("'", ""):
                required.add(_canonical(re.split(r"[\s;<>=!~\[(]", requirement.strip(), maxsplit=1)[0]))
    return [dist for name, dist in sorted(dists.items()) if name not in required]


def dependency_roots() -> list[str]:
    roots: set[str] = set()
    for dist in top_level_distributions():
        roots |= package_roots([PurePosixPath(str(f)) for f in dist.files or ()])
    return sorted(roots)


def compile_dependencies(names: list[str]) -> list[str]:
    """Import each of ``names`` in a child process of its own; say what had to be compiled instead.

    A child that fails (onnxruntime segfaults on import under qemu-user emulation, where arm64 images are built
    on an amd64 machine) costs nothing else: the files of the package it imported are compiled instead.
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    notes = [f"imported {len(names)} packages and modules, each in a child process"]
    for name in names:
        child = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, check=False)
        if child.returncode != 0:
            spec = importlib.util.find_spec(name)
            origin = Path(spec.origin) if spec is not None and spec.origin else None
            if origin is not None and origin.name == "__init__.py":
                compileall.compile_dir(origin.parent, quiet=1)
            elif origin is not None and origin.suffix == ".py":
                compileall.compile_file(origin, quiet=1)
            notes.append(f"import {name} exited {child.returncode}: compiled its files instead")
    return notes


def main(argv: list[str]) -> int:
    if argv == ["--dependencies"]:
        sys.stdout.write("\n".join(compile_dependencies([*dependency_roots(), *LAZY_IMPORTS])) + "\n")
    elif not argv:
        sys.dont_write_bytecode = False  # the image sets PYTHONDONTWRITEBYTECODE for run time, not for this
        import edge_module

        for info in pkgutil.walk_packages(edge_module.__path__, "edge_module."):
            importlib.import_module(info.name)
        sys.stdout.write(f"bytecode written for {len(sys.modules)} modules\n")
    else:
        sys.stderr.write("usage: python -m edge_module.bytecode [--dependencies]\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
