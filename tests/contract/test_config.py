"""Configuration: layers, interpolation, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.contract.config import load_config
from service.contract.errors import ConfigError


def test_defaults_are_the_documented_ones() -> None:
    config = load_config(environ={})
    ext = config.orchestrator.extensions
    assert ext.cache_size == 100 and ext.auto_load is True
    assert ext.cache_dir == "./data/extensions"  # {{orchestrator.paths.data_dir}}/extensions
    assert config.nats.url == "nats://127.0.0.1:4222"
    assert config.nats.queue_group == "extension-loader" and config.nats.subject_prefix == "extensions"
    assert config.nushell.timeout_s == 30 and config.nushell.max_concurrent == 4
    assert config.events.stream == "EXTENSION_EVENTS" and config.events.jetstream is False
    assert (config.events.api_prefix, config.events.require_stream) == ("$JS.API", False)
    assert config.registry.api_prefix == "$JS.API"


def test_the_watch_is_on_by_default_and_set_apart_from_auto_load() -> None:
    assert load_config(environ={}).orchestrator.extensions.watch is True
    ext = load_config(environ={}, overrides=["orchestrator.extensions.watch=false"]).orchestrator.extensions
    assert ext.watch is False and ext.auto_load is True
    env = {"EXTENSION_LOADER__ORCHESTRATOR__EXTENSIONS__AUTO_LOAD": "false"}
    ext = load_config(environ=env).orchestrator.extensions
    assert ext.watch is True and ext.auto_load is False


def test_layers_file_then_environment_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "loader.toml"
    file.write_text(
        '[orchestrator.paths]\ndata_dir = "/srv/orch"\n'
        "[orchestrator.extensions]\ncache_size = 7\n"
        '[nats]\nurl = "nats://file:4222"\nqueue_group = "from-file"\n'
        '[unrelated.orchestrator.section]\nkey = "an orchestrator file may hold other keys"\n'
    )
    env = {"EXTENSION_LOADER__NATS__URL": "nats://env:4222", "EXTENSION_LOADER__NUSHELL__TIMEOUT_S": "5"}
    config = load_config(file, environ=env, overrides=["nushell.timeout_s=2.5"])
    assert config.orchestrator.extensions.cache_dir == "/srv/orch/extensions"
    assert config.orchestrator.extensions.cache_size == 7
    assert config.nats.queue_group == "from-file"
    assert config.nats.url == "nats://env:4222"
    assert config.nushell.timeout_s == 2.5


def test_environment_values_are_read_as_toml() -> None:
    env = {
        "EXTENSION_LOADER__ORCHESTRATOR__EXTENSIONS__PATHS": '["/a", "/b"]',
        "EXTENSION_LOADER__ORCHESTRATOR__EXTENSIONS__AUTO_LOAD": "false",
        "EXTENSION_LOADER__NATS__URL": "nats://a:4222,nats://b:4222",
    }
    config = load_config(environ=env)
    assert config.orchestrator.extensions.paths == ("/a", "/b")
    assert config.orchestrator.extensions.auto_load is False
    assert config.nats.servers == ["nats://a:4222", "nats://b:4222"]


@pytest.mark.parametrize("text", ["123456", "true", "1979-05-27", "3.5", "[1, 2]", '"quoted"', "a=b # c"])
def test_environment_text_is_taken_as_is_by_text_keys(text: str) -> None:
    """A password of digits (or `true`, or a date) is text: it must not become a number and stop the service."""
    env = {"EXTENSION_LOADER__NATS__USER": "loader", "EXTENSION_LOADER__NATS__PASSWORD": text}
    config = load_config(environ=env)
    assert config.nats.password == text
    assert load_config(environ={"EXTENSION_LOADER__NATS__NAME": text}).nats.name == text


def test_environment_numbers_and_booleans_are_parsed_by_the_key_type() -> None:
    env = {
        "EXTENSION_LOADER__NUSHELL__MAX_CONCURRENT": "8",
        "EXTENSION_LOADER__NUSHELL__TIMEOUT_S": "5",
        "EXTENSION_LOADER__NATS__DRAIN_TIMEOUT_S": "2.5",
        "EXTENSION_LOADER__EVENTS__JETSTREAM": "true",
    }
    config = load_config(environ=env)
    assert config.nushell.max_concurrent == 8
    assert config.nushell.timeout_s == 5.0 and config.nats.drain_timeout_s == 2.5
    assert config.events.jetstream is True


@pytest.mark.parametrize(
    ("variable", "text", "key"),
    [
        ("EXTENSION_LOADER__NUSHELL__MAX_CONCURRENT", "many", "nushell.max_concurrent"),
        ("EXTENSION_LOADER__NUSHELL__MAX_CONCURRENT", "2.5", "nushell.max_concurrent"),
        ("EXTENSION_LOADER__NUSHELL__TIMEOUT_S", "soon", "nushell.timeout_s"),
        ("EXTENSION_LOADER__EVENTS__JETSTREAM", "yes", "events.jetstream"),
        ("EXTENSION_LOADER__EVENTS__JETSTREAM", "1", "events.jetstream"),
        ("EXTENSION_LOADER__ORCHESTRATOR__EXTENSIONS__CACHE_SIZE", "1979-05-27", "orchestrator.extensions.cache_size"),
    ],
)
def test_environment_values_of_the_wrong_type_name_the_key(variable: str, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={variable: text})
    assert info.value.key == key


def test_command_line_text_keys_take_a_bare_value_as_text() -> None:
    """`--set nats.password=123456` is the text 123456, as in the environment; a TOML string is still unquoted."""
    config = load_config(environ={}, overrides=["nats.password=123456", "nats.user=true"])
    assert (config.nats.user, config.nats.password) == ("true", "123456")
    assert load_config(environ={}, overrides=['nats.password="123456"']).nats.password == "123456"


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ("orchestrator.extensions.cache_size=0", "orchestrator.extensions.cache_size", ">= 1"),
        ('orchestrator.extensions.cache_size="many"', "orchestrator.extensions.cache_size", "int"),
        ("nushell.timeout_s=-1", "nushell.timeout_s", "> 0"),
        ("nushell.max_concurrent=0", "nushell.max_concurrent", ">= 1"),
        ("nushell.timout_s=3", "nushell.timout_s", "unknown"),
        ('nats.subject_prefix="a b"', "nats.subject_prefix", "regex"),
        ("orchestrator.extensions.paths=[]", "orchestrator.extensions.paths", "length"),
        ("events.jetstream=3", "events.jetstream", "bool"),
        ('events.api_prefix="$JS.events.*"', "events.api_prefix", "without wildcards"),
        ('registry.api_prefix="$JS reg"', "registry.api_prefix", "without wildcards"),
    ],
)
def test_bad_values_name_the_key(override: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, overrides=[override])
    assert info.value.key == key
    assert words in str(info.value)


def test_interpolation_errors_name_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, overrides=['orchestrator.extensions.cache_dir="{{nowhere.at.all}}/x"'])
    assert info.value.key == "orchestrator.extensions.cache_dir"
    assert "names no key" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(
            environ={},
            overrides=['orchestrator.paths.data_dir="{{orchestrator.extensions.cache_dir}}"'],
        )
    assert "refers back to itself" in str(info.value)


def test_interpolation_leaves_keys_the_service_does_not_read_alone(tmp_path: Path) -> None:
    """An orchestrator's own file refers to things this service knows nothing of; only its keys are resolved."""
    file = tmp_path / "orchestrator.toml"
    file.write_text(
        '[server]\nname = "orch-1"\n'
        '[deploy]\nhost = "{{ server.hostname }}"\nhosts = ["{{ server.hostname }}", "{{ deploy }}"]\n'
        '[orchestrator]\nbanner = "{{ server.hostname }}"\n'
        '[orchestrator.paths]\ndata_dir = "/srv/{{ server.name }}"\n'
        '[orchestrator.extensions]\npaths = ["{{orchestrator.paths.data_dir}}/ext"]\n'
        '[orchestrator.ui]\nurl = "https://{{ server.hostname }}"\n'
    )
    config = load_config(file, environ={})
    assert config.orchestrator.paths.data_dir == "/srv/orch-1"
    assert config.orchestrator.extensions.cache_dir == "/srv/orch-1/extensions"
    assert config.orchestrator.extensions.paths == ("/srv/orch-1/ext",)
    # A bad reference in a key the service reads is still refused, and named.
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={}, overrides=['nats.name="{{ server.hostname }}"'])
    assert info.value.key == "nats.name" and "names no key" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={}, overrides=['orchestrator.extensions.paths=["/a", "{{ server.hostname }}"]'])
    assert info.value.key == "orchestrator.extensions.paths.1"


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[nats\nurl = 1")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(bad, environ={})
    assert info.value.key == str(bad)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(environ={}, overrides=["just-a-word"])


def test_tls_files_are_checked_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, overrides=[f'nats.tls_ca="{tmp_path / "missing-ca.pem"}"'])
    assert info.value.key == "nats.tls_ca" and "not a readable file" in str(info.value)
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, overrides=[f'nats.tls_ca="{junk}"'])
    assert info.value.key == "nats.tls_ca" and "not a usable certificate" in str(info.value)


def test_the_inbox_prefix_is_the_users_own_unless_given() -> None:
    """nats.conf lets each user receive replies under _INBOX.<user> only: the default follows nats.user, and
    without one it is that of the development server's no_auth_user, orchestrator."""
    assert load_config(environ={}).nats.inbox == "_INBOX.orchestrator"
    loader = load_config(environ={}, overrides=["nats.user=loader"]).nats
    assert loader.inbox == "_INBOX.loader" and loader.credentials()["inbox_prefix"] == "_INBOX.loader"
    given = load_config(
        environ={"EXTENSION_LOADER__NATS__INBOX_PREFIX": "_INBOX.team.loaders"}, overrides=["nats.user=loader"]
    ).nats
    assert given.inbox == "_INBOX.team.loaders" and given.credentials()["inbox_prefix"] == "_INBOX.team.loaders"
    token = load_config(environ={}, overrides=["nats.token=t0ken", "nats.inbox_prefix=_INBOX.svc"]).nats
    assert token.credentials()["inbox_prefix"] == "_INBOX.svc"


@pytest.mark.parametrize("prefix", ["_INBOX.>", "_INBOX.*", "_INBOX.a*", "_INBOX.", ".x", "_INBOX..x", "a b", "x\t"])
def test_an_inbox_prefix_must_be_a_subject_without_wildcards(prefix: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={"EXTENSION_LOADER__NATS__INBOX_PREFIX": prefix})
    assert info.value.key == "nats.inbox_prefix" and "without wildcards" in str(info.value)


def test_a_user_name_that_makes_no_inbox_prefix_asks_for_one() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, overrides=['nats.user="svc loader"'])
    assert info.value.key == "nats.inbox_prefix" and "set nats.inbox_prefix" in str(info.value)
    config = load_config(environ={}, overrides=['nats.user="svc loader"', "nats.inbox_prefix=_INBOX.svc"])
    assert config.nats.inbox == "_INBOX.svc"


def test_the_registry_is_reached_under_the_plain_api_prefix_unless_given() -> None:
    """A single-account server needs nothing set; in another account, the prefix its imports map the API to."""
    assert load_config(environ={}).registry.api_prefix == "$JS.API"
    env = {"EXTENSION_LOADER__REGISTRY__API_PREFIX": "$JS.reg.API"}
    assert load_config(environ=env).registry.api_prefix == "$JS.reg.API"
    assert load_config(environ={}, overrides=["registry.api_prefix=$JS.reg.API"]).registry.api_prefix == "$JS.reg.API"


@pytest.mark.parametrize("prefix", ["", "$JS.>", "$JS.*.API", "$JS.API.", ".API", "$JS..API", "$JS API"])
def test_a_registry_api_prefix_must_be_a_subject_without_wildcards(prefix: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={"EXTENSION_LOADER__REGISTRY__API_PREFIX": prefix})
    assert info.value.key == "registry.api_prefix" and "without wildcards" in str(info.value)


def test_a_commands_own_layer_sits_under_what_the_person_gives() -> None:
    """`extension-loader dev`'s settings for nats.conf's accounts fill what is left at the defaults, and give way
    to a file, the environment or --set, even where those say the default's own value."""
    layer = {"events.require_stream": True, "registry.api_prefix": "$JS.reg.API"}
    assert load_config(environ={}, layer=layer).events.require_stream is True
    said = load_config(
        environ={}, overrides=["events.require_stream=false", "registry.api_prefix=$JS.API"], layer=layer
    )
    assert (said.events.require_stream, said.registry.api_prefix) == (False, "$JS.API")
    env = {"EXTENSION_LOADER__EVENTS__REQUIRE_STREAM": "false"}
    assert load_config(environ=env, layer=layer).events.require_stream is False
