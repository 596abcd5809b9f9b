"""Gateway-side state fed by management: the mapping store (pure, no I/O)."""

from nbgateway.store.mappings import MappingObserver, MappingStore

__all__ = ["MappingObserver", "MappingStore"]
