"""The building layer: the pipelines (``pipelines``), what techniques do to them
(``techniques``), one generation's inputs (``generation``) and the pipeline handle behind
``sd_pipe`` (``runner``).
"""
