"""Exceptions shared by the core and the pytest glue, in a module that imports nothing heavy."""


class NeedsRealRun(Exception):
    """What an estimated generation cannot give (pixels, timings): the plugin skips the test
    with this message instead of asserting on figures that were never measured."""
