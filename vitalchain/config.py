"""One place for vitalchain's configuration.

Every setting is an environment variable named ``VITALCHAIN_<FIELD>`` (upper case).  Values that
vitalchain itself records at run time (the anchor contract's address after ``vitalchain anchor
deploy``) go into ``<state_dir>/settings.env``; the environment always wins over that file, so an
operator can pin anything.  Secrets are never settings: they are read from files under
``<state_dir>/secrets`` (created with fresh random bytes in development) or from the files the
``*_FILE`` settings name, so that nothing secret ever sits in the repository.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vitalchain.errors import InvalidInput

ENV_PREFIX = "VITALCHAIN_"
SETTINGS_FILE_NAME = "settings.env"

# anvil's first development account: public knowledge, so production mode refuses it.
DEV_ANCHOR_PRIVATE_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


class ConfigError(InvalidInput):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Field ``foo_bar`` is read from ``VITALCHAIN_FOO_BAR``."""

    mode: str = "dev"  # dev | production
    state_dir: Path = Path(".state")
    host: str = "127.0.0.1"

    mqtt_port: int = 1883
    kafka_port: int = 9092
    influx_port: int = 8086
    eth_port: int = 8545
    api_port: int = 8700
    # Ports the services need besides their client port (InfluxDB's backup RPC listener).
    influx_rpc_port: int = 8088

    # Where the clients find each service when it is not the local stack (production, compose):
    # empty means ``host`` and the port above.
    mqtt_host: str = ""
    mqtt_tls_ca_file: str = ""
    # Devices are split into this many shards (topic vitals/<shard>/<device_id>, D24 in
    # docs/DECISIONS.md); fixed at install: changing it moves devices to other topics.
    mqtt_shards: int = 4
    kafka_servers: str = ""
    influx_endpoint: str = ""
    influx_token_file: str = ""
    eth_rpc: str = ""

    influx_db: str = "vitalchain"
    raw_topic: str = "vitals.raw"
    dlq_topic: str = "vitals.dlq"
    partitions: int = 4
    window_seconds: float = 10.0
    idle_seal_seconds: float = 5.0
    # Faust app id = Kafka consumer group of the stream workers (tests use a unique one).
    stream_app_id: str = "vitalchain-stream"
    max_payload_bytes: int = 65536
    max_future_seconds: float = 300.0
    # The bridge's per-device flood rule (ingest.ratelimit): sustained readings/s and burst.
    flood_rate_per_second: float = 50.0
    flood_burst: int = 500
    # Device signatures at the bridge (docs/DEVICES.md): "required" refuses unsigned messages
    # (bad_signature); "optional" lets unsigned ones through during a migration. A present
    # signature is checked in both modes.
    device_signatures: str = "required"
    # The bridge writes again what Kafka acknowledged within this many seconds on a partition
    # whose offsets went backwards (a broker that lost its log: ingest/replay.py); 0: never.
    bridge_replay_seconds: float = 60.0
    # The stream writes the readings it took to InfluxDB (queryable, not yet sealed) at least this
    # often, from the start of one write to the start of the next: the longest a taken reading
    # waits for its write to begin. (0.5 s saved InfluxDB no measurable CPU at 10,000
    # readings/s; 0.05 s with a 50 ms fetch wait, against 0.1 s and 100 ms, made readings ~40 ms
    # younger in InfluxDB at 5,000 readings/s and cost ~7 % of the pipeline's CPU per reading
    # at 10,000 readings/s: docs/PERFORMANCE.md.)
    receipt_flush_seconds: float = 0.1
    # The longest a stream worker's fetch waits for records. A broker that answers a fetch only
    # at this deadline when records arrive during it (tansu, measured: docs/PERFORMANCE.md) adds
    # up to this much to every reading's way to the screen; Apache Kafka answers as soon as
    # records arrive, so there a longer wait only saves idle fetches.
    kafka_fetch_wait_ms: int = 100

    eth_chain_id: int = 31337
    eth_block_time: float = 1.0
    anchor_contract: str = ""
    anchor_private_key_file: str = ""
    anchor_interval_seconds: float = 30.0
    anchor_every_windows: int = 20
    anchor_confirmations: int = 2
    # Fee policy: the worker never offers more than this per gas (EIP-1559 max fee), and never
    # spends more than this per rolling hour; above either it waits, keeping the backlog.
    anchor_max_fee_gwei: float = 100.0
    anchor_max_spend_eth_per_hour: float = 0.05
    # Anchors are re-checked for reorgs until their block is this deep (then taken as final).
    anchor_reorg_watch_blocks: int = 64

    salt_key_file: str = ""
    ledger_file: str = ""
    # Empty: the ledger is the SQLite file ``ledger_path`` (the embedded default). A
    # ``postgresql://USER@HOST:PORT/DB`` URL puts the ledger (window log, reading index, anchor
    # records, API users/grants/access entries) in that database instead, so workers on several
    # hosts share it; on 127.0.0.1 ``vitalchain stack up`` runs a private server for it.
    ledger_url: str = ""

    # --- derived locations -------------------------------------------------------------
    @property
    def mqtt_broker_host(self) -> str:
        return self.mqtt_host or self.host

    @property
    def mqtt_url(self) -> str:
        scheme = "mqtts" if self.mqtt_tls_ca_file else "mqtt"
        return f"{scheme}://{self.mqtt_broker_host}:{self.mqtt_port}"

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka_servers or f"{self.host}:{self.kafka_port}"

    @property
    def influx_url(self) -> str:
        return self.influx_endpoint or f"http://{self.host}:{self.influx_port}"

    @property
    def eth_rpc_url(self) -> str:
        return self.eth_rpc or f"http://{self.host}:{self.eth_port}"

    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def ledger_path(self) -> Path:
        """SQLite file holding the window log, reading index and anchor records."""
        return Path(self.ledger_file) if self.ledger_file else self.state_dir / "ledger.sqlite"

    @property
    def ledger_target(self) -> str | Path:
        """What the ledger's stores open: the PostgreSQL URL when one is set, else the file."""
        return self.ledger_url or self.ledger_path

    @property
    def ledger_on_postgres(self) -> bool:
        return bool(self.ledger_url)

    @property
    def private_postgres(self) -> PostgresUrl | None:
        """The URL's parts when it names a server on 127.0.0.1 (``stack up`` runs that one)."""
        if not self.ledger_url:
            return None
        url = parse_postgres_url(self.ledger_url)
        return url if url.host == "127.0.0.1" else None

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class PostgresUrl:
    user: str
    host: str
    port: int
    database: str


def parse_postgres_url(url: str) -> PostgresUrl:
    """``postgresql://USER@HOST:PORT/DB`` in parts; anything else is a :class:`ConfigError`."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = parts.port or 5432
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}LEDGER_URL has a bad port: {exc}") from exc
    database = parts.path.lstrip("/")
    if parts.scheme not in ("postgresql", "postgres") or not parts.username or not parts.hostname \
            or not database or "/" in database:
        raise ConfigError(f"{ENV_PREFIX}LEDGER_URL must look like postgresql://USER@HOST:PORT/DB "
                          f"(got scheme {parts.scheme!r}, user {parts.username!r}, host "
                          f"{parts.hostname!r}, database {database!r})")
    return PostgresUrl(parts.username, parts.hostname, port, database)


def _coerce(name: str, raw: str, target: Any) -> Any:
    try:
        if target is int:
            return int(raw)
        if target is float:
            return float(raw)
        if target is Path:
            return Path(raw)
        return raw
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {target.__name__}") from exc


def read_settings_file(path: Path) -> dict[str, str]:
    """Parse a ``KEY=value`` file (comments with ``#``); missing file means no values."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip()
    return values


def record_setting(settings: Settings, key: str, value: str) -> Path:
    """Persist ``VITALCHAIN_<KEY>=value`` in the state folder's settings file."""
    path = settings.state_dir / SETTINGS_FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    values = read_settings_file(path)
    values[f"{ENV_PREFIX}{key.upper()}"] = value
    path.write_text("".join(f"{k}={v}\n" for k, v in sorted(values.items())))
    return path


def load_settings(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Resolve settings: defaults < ``<state_dir>/settings.env`` < environment < ``overrides``."""
    env = dict(os.environ if environ is None else environ)
    types = {f.name: type(f.default) for f in fields(Settings)}
    state_dir = Path(overrides.get("state_dir") or env.get(f"{ENV_PREFIX}STATE_DIR", ".state"))
    merged: dict[str, str] = {}
    merged.update(read_settings_file(state_dir / SETTINGS_FILE_NAME))
    merged.update({k: v for k, v in env.items() if k.startswith(ENV_PREFIX)})
    values: dict[str, Any] = {}
    for key, raw in merged.items():
        name = key[len(ENV_PREFIX):].lower()
        if name in types:
            values[name] = _coerce(name, raw, types[name])
    values.update(overrides)
    values["state_dir"] = Path(values.get("state_dir", state_dir)).absolute()
    settings = Settings(**values)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    if settings.ledger_url:
        parse_postgres_url(settings.ledger_url)
    if settings.mode not in ("dev", "production"):
        raise ConfigError(f"{ENV_PREFIX}MODE must be 'dev' or 'production', not {settings.mode!r}")
    if settings.device_signatures not in ("required", "optional"):
        raise ConfigError(f"{ENV_PREFIX}DEVICE_SIGNATURES must be 'required' or 'optional', "
                          f"not {settings.device_signatures!r}")
    if settings.partitions < 1:
        raise ConfigError(f"{ENV_PREFIX}PARTITIONS must be at least 1")
    if settings.window_seconds <= 0:
        raise ConfigError(f"{ENV_PREFIX}WINDOW_SECONDS must be positive")
    if not 1 <= settings.mqtt_shards <= 1024:
        raise ConfigError(f"{ENV_PREFIX}MQTT_SHARDS must be within 1..1024")
    if not settings.flood_rate_per_second > 0:
        raise ConfigError(f"{ENV_PREFIX}FLOOD_RATE_PER_SECOND must be positive")
    if settings.bridge_replay_seconds < 0:
        raise ConfigError(f"{ENV_PREFIX}BRIDGE_REPLAY_SECONDS must be 0 (off) or more")
    if not 0 < settings.receipt_flush_seconds <= 10:
        raise ConfigError(f"{ENV_PREFIX}RECEIPT_FLUSH_SECONDS must be more than 0 and at most 10")
    if not 1 <= settings.kafka_fetch_wait_ms <= 10_000:
        raise ConfigError(f"{ENV_PREFIX}KAFKA_FETCH_WAIT_MS must be within 1..10000")
    if settings.flood_burst < 1:
        raise ConfigError(f"{ENV_PREFIX}FLOOD_BURST must be at least 1")
    if settings.anchor_confirmations < 1:
        raise ConfigError(f"{ENV_PREFIX}ANCHOR_CONFIRMATIONS must be at least 1")
    if not settings.anchor_max_fee_gwei > 0:
        raise ConfigError(f"{ENV_PREFIX}ANCHOR_MAX_FEE_GWEI must be positive")
    if not settings.anchor_max_spend_eth_per_hour > 0:
        raise ConfigError(f"{ENV_PREFIX}ANCHOR_MAX_SPEND_ETH_PER_HOUR must be positive")
    if settings.anchor_reorg_watch_blocks < settings.anchor_confirmations:
        raise ConfigError(f"{ENV_PREFIX}ANCHOR_REORG_WATCH_BLOCKS must be at least "
                          f"{ENV_PREFIX}ANCHOR_CONFIRMATIONS")


def to_environ(settings: Settings) -> dict[str, str]:
    """The ``VITALCHAIN_*`` variables that make a child process resolve exactly these settings."""
    env: dict[str, str] = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        env[f"{ENV_PREFIX}{f.name.upper()}"] = str(value)
    return env
