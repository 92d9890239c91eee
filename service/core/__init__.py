"""The core: what the service knows about extensions, with no NATS in sight.

    manager.py    the LRU cache in front of the runner: single-flight, statistics, the events each change causes
    store.py      the extension roots on disk: names, versions, metadata, dependency trees
    versions.py   versions and constraints (semantic versions, the contract's pre-release rule)
    graph.py      a dependency tree as the graph reply (JSON, DOT, Mermaid)
    reconcile.py  bringing the cache in step with the disk after a change (hot reload, removal, new version)
    slices.py     long work (a discover of a large tree) done on the event loop a slice at a time
    audit.py      one audit line per change of state; metrics.py: the OpenTelemetry instruments

It may use the runtime and the contract. It returns events; sending them, and everything else on the wire,
is the wire's job.
"""
