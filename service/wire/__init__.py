"""The wire: NATS in and out. A request's walk through it:

    service.py     ExtensionService: connects, subscribes, drains; owns the parts below
    connection.py  the nats-py client's life cycle and start-up refusals
    dispatcher.py  a message -> decoded request -> handler -> reply; inline or in a task; the one place where
                   an exception becomes an error reply (built by replies.py)
    codec.py       JSON and MessagePack bodies, the envelope
    frames.py      successful replies as ready-made protocol frames (for the nats-py release pinned)
    handlers.py    one plain method per subject, calling the core (they know nothing of NATS)
    events.py      publishing extensions.loaded / extensions.unloaded (JetStream when configured)
    peers.py       other instances' events; micro.py: the $SRV replies; tracing.py: trace context
    follower.py    following the registry's index, and bringing the cache in step with it

It may use the core, the runtime and the contract; it never reads configuration files or the environment.
"""
