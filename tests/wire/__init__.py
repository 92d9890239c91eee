"""Tests of the service on the wire, over a real nats-server: requests, bad input, scale, events, tracing."""
