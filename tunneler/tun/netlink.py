"""pyroute2's `IPRoute` without the eager imports of pyroute2's package `__init__`.

``import pyroute2`` imports every API the library has (NDB and IPDB with sqlite3, ethtool,
nl80211, WireGuard, IPVS, conntrack, Plan9, ...): 163 modules and 11.2 MiB of RSS in every
`tunneler run`, which needs only `IPRoute` (99 modules, 5.3 MiB; measured after uvloop,
cryptography and aiohttp are loaded, as in the daemon). So the package is registered without
running its `__init__`, and only ``pyroute2.iproute.linux`` is imported. The package stays
whole for anyone else in the process: a submodule name resolves to the submodule, and the
first use of any other top-level name (``from pyroute2 import NDB``) runs the real
`__init__` then, which reuses the submodules already loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

_PACKAGE = "pyroute2"


def _register_bare_package() -> None:
    if _PACKAGE in sys.modules:
        return  # already imported (whole, or bare by an earlier import of this module)
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.loader is None:
        raise ImportError(f"{_PACKAGE} is not installed")
    loader = spec.loader
    package = importlib.util.module_from_spec(spec)

    def __getattr__(name: str) -> object:  # PEP 562: names the package lacks so far
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"{_PACKAGE}.{name}") is not None:
            return importlib.import_module(f"{_PACKAGE}.{name}")
        del package.__dict__["__getattr__"]
        loader.exec_module(package)  # the real __init__, once
        return getattr(package, name)

    package.__dict__["__getattr__"] = __getattr__
    sys.modules[_PACKAGE] = package


_register_bare_package()

from pyroute2.iproute.linux import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

__all__ = ["IPRoute", "NetlinkError"]
