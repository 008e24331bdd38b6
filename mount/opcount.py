"""Counts of FUSE requests by operation, for benchmarks and tests (``SPACEFS_COUNT_OPS=1``).

How many round trips the kernel makes per file is what decides a training loader's
speed on a warm mount, and it depends on kernel cache settings that no timing shows
directly. With ``SPACEFS_COUNT_OPS=1`` in its environment the daemon counts every
request that reaches its handlers and reports the totals in the control socket's
``ping`` answer (``fuse_ops``). Off by default: counting costs a dict update per request.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import pyfuse3

ENV = "SPACEFS_COUNT_OPS"

# Every request handler pyfuse3 may call (those the file system does not define included:
# the base class answers ENOSYS, and the kernel's first such request still counts).
HANDLERS = tuple(name for name, value in vars(pyfuse3.Operations).items()
                 if not name.startswith("_") and callable(value) and name not in ("init", "stacktrace"))


def enabled() -> bool:
    """Whether ``SPACEFS_COUNT_OPS`` asks for counting."""
    return os.environ.get(ENV, "") not in ("", "0")


def install(ops: pyfuse3.Operations) -> Counter[str]:
    """Wrap ``ops``'s handlers (on the instance, where pyfuse3 looks them up) so each
    call adds one to its operation's count; returns the live counter."""
    counts: Counter[str] = Counter()

    def counted(name: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(handler)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return await handler(*args, **kwargs)

        return wrapper

    for name in HANDLERS:
        setattr(ops, name, counted(name, getattr(ops, name)))
    return counts
