"""The store: SQL persistence of episodes, attempts, adapters, training runs and leases.

Modules: ``db`` (engines, sessions, Alembic upgrade/downgrade), ``models`` (SQLAlchemy tables),
``records`` (the plain records the agent hands over), ``repos`` (every query, taking a Session
and never committing), ``writer`` (the batched episode writer with its spool), ``sanitize`` (the
one place values are made storable on both SQLite and PostgreSQL). Imports nothing else of rrr.
Importing the package itself loads nothing; import the module you need.
"""
