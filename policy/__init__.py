"""Entities, evaluation, quotas, counter stores and usage: the engine behind every transport."""
