"""The pytest plugin: the hooks (``hooks``, the pytest11 entry point) over the rooms they call:
the fixtures, a test's report (``outcome``) and its leftovers (``leaks``); the session
(``session``); a test's record (``records``) and the machine (``machine``); the mode, measured
or estimated (``mode``); the options, the session's outputs (``saving``) and each test's state.

Importing it must stay cheap: it is imported by every pytest run where the package is
installed, so nothing here imports torch or diffusers at module level.
"""
