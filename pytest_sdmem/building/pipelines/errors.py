"""The one exception the pipelines package raises for a model it cannot provide."""

from __future__ import annotations


class ModelError(Exception):
    """A model could not be built or loaded.

    The message names the model, says what was wrong and what is accepted, so that a test
    session shows one actionable line instead of a traceback from deep inside the hub client;
    the underlying exception, if any, is chained as ``__cause__``.
    """
