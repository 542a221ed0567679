"""cellbox: self-hosted sandboxes (cells) for AI agents, served as the Cell API."""

__version__ = "0.1.0"
