"""pytest-sdmem: memory and speed budgets for diffusers pipelines, stated as pytest markers.

The measuring core (``memory``, ``timing``, ``stats``, ``pipelines``, ``techniques``) is plain
Python; ``plugin`` and ``fixtures`` are the thin pytest glue over it.
"""

__version__ = "0.1.0"
