"""The wire messages of CONTRACT.md as msgspec structs, all under one name: import them from here.

The structs are the contract: they validate what arrives (types, names, unknown fields) and they are what
`schemas/` is generated from. Each idea has its own module:

    values.py      extension types, names, version specs, timestamps and their patterns
    requests.py    the request bodies, one per request subject
    replies.py     what a successful reply's `data` holds
    envelopes.py   the success and failure envelopes, the error body, the fleet's per-instance answer
    events.py      the events, and `Event`, either of them

Which subject takes which request and answers with which data is the subjects table (`subjects.py`).
"""

from __future__ import annotations

# Each module lists what it defines in its __all__; a struct added there is importable from here.
from .envelopes import *  # noqa: F403
from .events import *  # noqa: F403
from .replies import *  # noqa: F403
from .requests import *  # noqa: F403
from .values import *  # noqa: F403
