"""Online feature store (Redis, SQLite) and the durable event log."""
