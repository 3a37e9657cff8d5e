"""The pytest plugin: the hooks (``hooks``, the pytest11 entry point), the fixtures, the
options and the per-test state.

Importing it must stay cheap: it is imported by every pytest run where the package is
installed, so nothing here imports torch or diffusers at module level.
"""
