"""The output folder: its layout, typed records, fingerprints, atomic writes and the lock. The run writes records here;
the report reads them.
"""
