"""Congestion control behind one small interface (see base.CongestionControl).

`create(name)` makes one controller for one connection; `ALGORITHMS` lists the names.
"""

from __future__ import annotations

from .base import INFINITE_SSTHRESH, CongestionControl
from .cubic import Cubic
from .newreno import NewReno

_BY_NAME: dict[str, type[CongestionControl]] = {"cubic": Cubic, "newreno": NewReno}
ALGORITHMS = tuple(sorted(_BY_NAME))
DEFAULT = "cubic"


def create(name: str, initial_window: int = 10) -> CongestionControl:
    """A new controller; `initial_window` in segments (TcpConfig.initial_window)."""
    cls = _BY_NAME.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown congestion control '{name}'; "
                         f"choose one of {', '.join(ALGORITHMS)}")
    return cls(initial_window)


__all__ = ["ALGORITHMS", "DEFAULT", "INFINITE_SSTHRESH", "CongestionControl", "Cubic",
           "NewReno", "create"]
