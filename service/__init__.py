"""Extension loader: loads infrastructure extensions through Nushell and serves them over NATS.

The public surface: the configuration, the service and its parts, the client, and the error tree.
"""

from .app.client import LoaderClient, RemoteError
from .contract.config import Config, load_config
from .contract.errors import (
    ConfigError,
    DependencyError,
    InvalidExtension,
    InvalidRequest,
    LoaderError,
    LoadFailed,
    LoadTimeout,
    NotFound,
    Unavailable,
    VersionNotFound,
)
from .core.manager import ExtensionManager
from .wire.service import ExtensionService

__all__ = [
    "Config",
    "ConfigError",
    "DependencyError",
    "ExtensionManager",
    "ExtensionService",
    "InvalidExtension",
    "InvalidRequest",
    "LoadFailed",
    "LoadTimeout",
    "LoaderClient",
    "LoaderError",
    "NotFound",
    "RemoteError",
    "Unavailable",
    "VersionNotFound",
    "load_config",
]
