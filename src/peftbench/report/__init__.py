"""The report, from records only (never a model, never torch): loading, statistics, verdict, table, plots, documents,
model cards and exports.
"""
