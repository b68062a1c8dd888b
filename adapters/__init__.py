"""The adapter lifecycle: `folder` (the on-disk format, checks, durable writes) and `serving`
(load on every replica, probe, publish, activate, roll back, drain, unload, garbage collection)."""
