"""The cyclic garbage collector kept off the objects that existed before a step's work.

A scan or a CSV makes millions of short-lived objects and few cycles. Each of CPython's full
collections walks every tracked object of the process, and in a Dagster run the process holds
Dagster's, SQLAlchemy's and the project's hundreds of thousands of objects: a full collection
there costs about 0.1 s, and a 100,000-event day triggered several. :func:`collector_set_aside`
moves the objects that exist when the work starts to CPython's permanent generation
(``gc.freeze``) and gives them back when it ends (``gc.unfreeze``): about a tenth of the CPU of
``dagster asset materialize`` of a day (benchmarks/README.md, "Sixth round"). Nothing is lost:
objects created during the work are collected as usual, and what the frozen ones leave as
garbage is collected after the work.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_set_aside() -> Iterator[None]:
    """Freeze the objects that exist now for the duration of the block, then unfreeze them.

    Where the process has frozen objects already (the command line freezes its start-up for
    the whole run), the collector is left as it is, so that the block does not unfreeze them.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
