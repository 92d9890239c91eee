"""The benchmark: the service against a bare nats-py echo responder, in one run on one machine.

`python -m bench` (or `make bench`) starts nats-server, the echo responder and the service as subprocesses,
drives both from this process with the same nats-py client, and writes `bench/results/latest.json` and a
Markdown table with the targets from the issue. `bench/run.py` runs the phases in order; `bench/README.md` says
which module holds what.
"""
