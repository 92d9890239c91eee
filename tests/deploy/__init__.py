"""Tests of the deployment files: nats.conf's permissions on a real server, compose and the Dockerfile."""
