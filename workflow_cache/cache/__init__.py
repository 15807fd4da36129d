"""Caches for step outcomes: adapters for user caches, a local store and Redis."""
