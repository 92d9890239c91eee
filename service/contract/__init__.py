"""The contract: the vocabulary every layer speaks, and the bottom of the layout.

    subjects.py   the subjects table: every request subject (its request, reply data, fleet twin, how it is
                  answered, who may send it) and every event subject
    messages.py   the wire messages of CONTRACT.md as msgspec structs (what schemas/ is generated from), one
                  import for values.py, requests.py, replies.py, envelopes.py and events.py
    errors.py     the error tree, one class per contract error code
    headers.py    the NATS header names and content types
    sections.py   the configuration's sections as typed structs (its keys are part of the contract too)
    config.py     how the configuration is read, in layers, and validated into those sections

Pure values and their validation: nothing here touches NATS, Nushell or the disk (but for reading the
configuration file it is given), and nothing here imports any other part of the service.
"""
