"""Exceptions shared by the core and the pytest glue, in a module that imports nothing heavy."""


class NeedsRealRun(Exception):
    """What an estimated generation cannot give (pixels, timings): the plugin skips the test
    with this message instead of asserting on figures that were never measured."""


class TechniqueError(ValueError):
    """A technique expression that cannot be used; the message says what and what is accepted.

    Defined here, not in ``techniques`` (which imports torch), so the plugin can catch it in
    every run without importing torch in runs that use no technique."""
