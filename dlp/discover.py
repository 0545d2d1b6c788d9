"""Import every module of a package, so that the methods they define register themselves (dlp.registry)."""
import importlib
import pkgutil


def import_submodules(package: str, path) -> list[str]:
    names = sorted(info.name for info in pkgutil.iter_modules(path) if not info.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names
