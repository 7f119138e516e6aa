"""The embedded backend (``sqlite:///path``): one SQLite file in WAL mode.

Modules: :mod:`~feature_store.sqlite.config` (settings, URL form),
:mod:`~feature_store.sqlite.store` (the store), :mod:`~feature_store.sqlite.writer`
(its single writer thread), :mod:`~feature_store.sqlite.ops` (the SQL of each
operation), :mod:`~feature_store.sqlite.schema` (tables, creation, migration).
"""
