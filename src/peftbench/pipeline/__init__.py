"""Runs: one method's staged run, the comparison over seeds and methods, the search, the executors (local processes,
Ray), the process lifecycle and the preflight. The only package that imports both the run-time half and the report.
"""
