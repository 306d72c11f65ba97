"""Rows, examples and splits: loading a dataset (hub, local files, the embedded samples) into the train/validation/test
examples every method shares.
"""
