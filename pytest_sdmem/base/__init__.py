"""The base layer: units, errors, atomic writes, user files, version shims and table text.

Everything else may import these; they import nothing of pytest-sdmem's.
"""
