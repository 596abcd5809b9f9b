"""nbgateway management service: data model, validation, store, REST API, admin CLI.

The domain types live in :mod:`.model`, the typed errors in :mod:`.errors`, the
service validation rules in :mod:`.validation`, and
the synchronous SQLAlchemy store with its Alembic migrations in :mod:`.store`
and :mod:`.migrations`.
"""
