"""Small helpers for using sutra from Python frameworks (documented in docs/tenancy.md and tested in
pgrx-tests/client): a Django index class and middleware, and an SQLAlchemy session hook."""
