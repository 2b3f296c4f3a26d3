"""The pure core: Pigment client, day windows, flattening, CSV writing, chunking, storage.

Nothing in this package imports dagster, so the ``pigment-audit`` command starts fast.
"""
