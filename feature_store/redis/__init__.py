"""The Redis backend (``redis://``, ``rediss://``, ``?cluster=true``).

Modules: :mod:`~feature_store.redis.config` (settings, URL form),
:mod:`~feature_store.redis.store` (the store), :mod:`~feature_store.redis.cluster`
(its Redis Cluster variant), :mod:`~feature_store.redis.keys` (every key name),
:mod:`~feature_store.redis.scripts` (the Lua scripts), :mod:`~feature_store.redis.conn`
(clients, errors, retries), :mod:`~feature_store.redis.stream` (the log stream:
reading it by cursor, exporters' commits, retention trim). Imports nothing, so
that a URL can be parsed without loading redis-py.
"""
