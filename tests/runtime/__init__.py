"""Tests of the runtime: the Nushell loader run by hand, and the sandbox around it."""
