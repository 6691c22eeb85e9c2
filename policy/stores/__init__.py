"""Counter stores: where quota counters live (memory or Redis)."""
