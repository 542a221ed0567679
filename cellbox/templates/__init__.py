"""Templates: specs registered by tenants, built once into a read-only layer their cells share."""

from .registry import Launch, TemplateRegistry

__all__ = ["Launch", "TemplateRegistry"]
