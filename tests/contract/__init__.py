"""Tests of the contract: configuration, and the schemas generated from the structs."""
