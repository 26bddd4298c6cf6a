"""The stages of a backup, one module each, and the flows built from them.

The flows: the drill, the sweep, and the restore from storage. Each function takes a
``Runtime`` and records, and returns a record.
"""
