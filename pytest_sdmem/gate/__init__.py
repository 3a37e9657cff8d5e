"""The gate: what a figure is judged against (budgets, markers, tolerances), the results
schema and the session's settings, the baseline comparison, and the verdicts, calibration
and saving built on them.

It reads figures the measuring and estimating layers produce; only the reports and the top
read it.
"""
