"""Build script: package layout and the C++ extension in ``csrc/``.

``kernels/`` and ``data_pipeline/`` are top-level folders in the repository but install as
``dsm_engine.kernels`` and ``dsm_engine.data_pipeline`` (a top-level ``kernels`` module would
collide with the Hugging Face ``kernels`` package).
"""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

try:
    from pybind11.setup_helpers import Pybind11Extension, build_ext
except ImportError:  # pybind11 is a build requirement; this only helps `python setup.py --help`.
    Pybind11Extension = None
    build_ext = None

ROOT = Path(__file__).parent
# import name -> folder in the repository
PACKAGE_ROOTS = {
    "dsm_engine": "dsm_engine",
    "dsm_engine.kernels": "kernels",
    "dsm_engine.data_pipeline": "data_pipeline",
}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for name, folder in PACKAGE_ROOTS.items():
        packages.append(name)
        package_dir[name] = folder
        for sub in find_packages(where=folder):
            packages.append(f"{name}.{sub}")
            package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
    # dsm_engine's own subpackages are found under it already; drop the remapped roots that
    # find_packages would otherwise list twice.
    return sorted(set(packages)), package_dir


def _extensions() -> list:
    if Pybind11Extension is None:
        return []
    # setuptools wants sources relative to the project root.
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))
    if not sources:
        return []
    return [
        Pybind11Extension(
            "dsm_engine._C",
            sources,
            cxx_std=17,
            extra_compile_args=["-O3"],
        )
    ]


packages, package_dir = _packages()
setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"dsm_engine": ["py.typed"]},
    ext_modules=_extensions(),
    cmdclass={"build_ext": build_ext} if build_ext is not None else {},
)
