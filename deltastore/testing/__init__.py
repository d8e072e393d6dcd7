"""Test suites shipped with the package, as zarr ships ``zarr.testing.store.StoreTests``: anyone
adding a backend subclasses :class:`BackendTests` and runs the same checks the store relies on.
Importing this package needs pytest."""

from .backend import BackendTests

__all__ = ["BackendTests"]
