"""The measuring layer: memory meters and snapshots (``memory``), rounds and ratios
(``timing``), and the statistics under both (``stats``).

It knows nothing of pipelines, techniques or budgets: it measures a block of code.
"""
