"""Tests of the edges: the command line as a person runs it, and the packaging."""
