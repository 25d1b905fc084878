"""personsearch: text-based person search (IRRA with attention-guided masking)."""

__version__ = "0.1.0"
