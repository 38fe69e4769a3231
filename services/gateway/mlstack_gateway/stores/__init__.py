"""Where answered predictions are kept.

- ``base``: what every store shares (the interface, the row, the error); it imports no store.
- ``sqlite`` and ``postgres``: the two stores, on ``group_commit`` (one commit for the rows of
  many requests) and ``migrations`` (the schema's versions); each imports ``base``, never back.
- ``factory``: ``open_store``, the store the settings name.

Nothing is imported here, so importing one module of the package loads no other.
"""
