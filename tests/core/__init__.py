"""Tests of the core: the store, versions, the latest rule, and keeping the cache in step with the disk."""
