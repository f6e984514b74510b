"""Synchronization setup: table facts, default mappings, field transfer, lookups and option rules."""
