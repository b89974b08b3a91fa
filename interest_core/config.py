"""One frozen settings object: YAML file, `INTEREST_*` environment variables on top, then
explicit overrides from the caller.

This is the only module that reads the environment; everything else takes `Settings`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from interest_core.stores import check_store_url, sqlite_path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = ROOT / "config" / "default.yaml"
DEFAULT_HMAC_KEY = "dev-only-pseudonymisation-key-change-me"


class PlatformConfig(BaseModel):
    """One platform: which adapter reads its events and where its catalogue comes from."""

    model_config = ConfigDict(frozen=True)

    adapter: str = Field(description="registered adapter name, e.g. 'amazon_review'")
    dataset: str = Field(description="the `datasets:` entry whose adapter reads this platform's "
                         "catalogue and interactions")
    display_name: str = ""
    event_types: tuple[str, ...] = ("review", "purchase", "view", "rating")
    max_in_flight: int | None = Field(
        default=None, ge=1,
        description="calls of this platform's API keys handled at once; beyond it only this platform "
        "gets RESOURCE_EXHAUSTED (fair share). None = half of the gateway's max_in_flight",
    )
    max_rps: float | None = Field(
        default=None, gt=0,
        description="calls per second of this platform's API keys (a token bucket holding 0.1 s "
        "of them); beyond it only this platform gets RESOURCE_EXHAUSTED. Bounds the work that an "
        "in-flight limit cannot: calls that finish without waiting (Recommend) never pile up in "
        "flight, however many come. None = no rate limit",
    )


def _default_platforms() -> dict[str, PlatformConfig]:
    return {
        "food": PlatformConfig(
            adapter="amazon_review", dataset="amazon-food-kitchen",
            display_name="grocery shop (Amazon Grocery & Gourmet Food)",
        ),
        "kitchen": PlatformConfig(
            adapter="amazon_review", dataset="amazon-food-kitchen",
            display_name="home-goods shop (Amazon Home & Kitchen)",
        ),
    }


class DatasetConfig(BaseModel):
    """One dataset: the adapter that reads it, its folder, and adapter-side -> our platform names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    adapter: str = Field(description="registered adapter name, e.g. 'llmcdsr_pair'")
    path: Path = Field(description="dataset folder; relative paths resolve against data_dir")
    platforms: dict[str, str] = Field(
        description="adapter-side platform key -> our platform name, e.g. {'A': 'food'}"
    )
    options: dict[str, Any] = Field(default_factory=dict)

    def folder(self, data_dir: Path) -> Path:
        return self.path if self.path.is_absolute() else data_dir / self.path


def _default_datasets() -> dict[str, DatasetConfig]:
    return {
        "amazon-food-kitchen": DatasetConfig(
            adapter="llmcdsr_pair", path=Path("amazon-food-kitchen"),
            platforms={"A": "food", "B": "kitchen"},
        ),
    }


class Settings(BaseSettings):
    """Everything configurable about the stack, with defaults that run `make up` as is."""

    model_config = SettingsConfigDict(
        env_prefix="INTEREST_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    # data and state
    data_dir: Path = ROOT / "data"
    var_dir: Path = ROOT / "var"
    platforms: dict[str, PlatformConfig] = Field(default_factory=_default_platforms)
    datasets: dict[str, DatasetConfig] = Field(
        default_factory=_default_datasets, description="dataset name -> adapter, folder, platforms"
    )
    catalogue_limit: int | None = Field(
        default=None, description="keep only the first N items of each catalogue (tests)"
    )

    # model
    model_repository: Path = ROOT / "model_repository"
    model_name: str = "interest_encoder"
    checkpoint: Path | None = Field(
        default=None, description="trained checkpoint dir; None = pretrained backbone"
    )
    ranking_assets: Path | None = Field(
        default=None,
        description="trained ranking assets; default <model_repository>/<model_name>/"
                    "interest_assets.npz when that file exists",
    )
    max_seq_len: int = 64
    triton_max_batch_size: int = 256

    # servers
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    metrics_port: int = 9464
    triton_host: str = "127.0.0.1"
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    triton_timeout_s: float = 10.0
    triton_ready_timeout_s: float = 180.0
    shutdown_grace_s: float = Field(
        default=5.0, ge=0,
        description="on SIGTERM, how long in-flight calls may take to finish once new ones are refused",
    )
    shutdown_drain_s: float = Field(
        default=1.0, ge=0,
        description="on SIGTERM, how long the gateway reports NOT_SERVING while still answering, so "
                    "that clients with health checking and load balancers move away first",
    )

    item_cache_size: int = Field(
        default=200_000, ge=0,
        description="item-embedding cache entries (texts seen before skip BERT); 0 turns it off",
    )

    rank_max_batch: int = Field(
        default=16, ge=1,
        description="Recommend queries scored together against a catalogue when they arrive at once",
    )
    rank_candidates: int = Field(
        default=1024, ge=0,
        description="with a trained blend, Recommend first scores only this many items of largest "
        "blend (at least 8*k) and keeps the result when a bound proves it exact; 0 turns it off",
    )

    ann_min_items: int = Field(
        default=100_000, ge=1,
        description="catalogues of at least this many items are ranked through an approximate "
        "nearest-neighbour index that `make engine` builds beside them (smaller ones are scored "
        "whole, exactly: faster there, docs/ranking.md); a larger value makes the gateway score "
        "even an indexed catalogue whole",
    )
    ann_ef_search: int = Field(
        default=1024, ge=16,
        description="how wide the index search looks (faiss HNSW efSearch): recall against time "
        "(at 10^6 items, efConstruction 400: overlap@10 0.989 with exact ranking: docs/ranking.md)",
    )
    ann_added_index_min: int = Field(
        default=10_000, ge=1,
        description="for a catalogue ranked through its index: once this many items added or changed "
        "since `make engine` built it are scored exactly beside it on every call, the gateway indexes "
        "them in the background (all of them since the build, again as they grow: docs/catalogue.md)",
    )
    ann_candidates: int = Field(
        default=100, ge=10,
        description="items the index supplies for the model term (at least k), scored exactly "
        "together with the collaborative candidates",
    )

    # limits
    max_in_flight: int = Field(
        default=256, ge=1,
        description="RPCs handled at once; beyond it the gateway answers RESOURCE_EXHAUSTED at once",
    )
    max_queued_rpcs: int = Field(
        default=256, ge=2,
        description="calls gRPC holds before the gateway's event loop takes them (a CPU-saturated "
        "loop takes them no faster than it answers them); past half of this, new calls are refused "
        "at random, past all of it always, and the client sees CANCELLED within milliseconds "
        "instead of waiting out its deadline",
    )
    operator_max_in_flight: int | None = Field(
        default=None, ge=1,
        description="calls of operator ('*') keys handled at once, as platforms.<name>.max_in_flight "
        "is for a platform's keys; None = half of max_in_flight",
    )
    share_pushback_s: float = Field(
        default=0.1, ge=0,
        description="a call refused for its platform's share is answered after this pause (the "
        "caller's other calls go on): a client that retries without backoff then spends far less "
        "of the gateway's CPU on refusals that other platforms need; 0 = refuse at once",
    )
    max_events_per_request: int = 512
    max_catalogue_changes_per_request: int = Field(
        default=1000, ge=1,
        description="UpdateCatalogue upserts plus removals per call; more is refused whole "
                    "(INVALID_ARGUMENT)",
    )
    catalogue_poll_s: float = Field(
        default=0.5, gt=0,
        description="how often a gateway reads the store's catalogue log for other gateways' changes",
    )
    max_text_chars: int = 1000
    max_k: int = 200
    max_exclude_ids: int = 10_000

    # access control: SHA-256 hex digest of an API key -> platform ("*" = operator); empty = open
    api_keys: dict[str, str] = Field(default_factory=dict)
    api_keys_file: Path | None = Field(
        default=None,
        description="YAML or JSON file of more digest -> platform entries, re-read on SIGHUP and when "
        "its modification time changes (key rotation without a restart; see docs/operations.md)",
    )
    api_keys_poll_s: float = Field(
        default=1.0, gt=0, description="how often the gateway looks at api_keys_file's modification time",
    )
    tls_cert_file: Path | None = Field(default=None, description="server certificate (PEM): TLS on")
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = Field(
        default=None, description="CA (PEM) that client certificates must chain to: mutual TLS"
    )

    # profile store (docs/operations.md, "Profile store")
    profile_store: str | None = Field(
        default=None,
        description="sqlite:///relative/path.sqlite3, sqlite:////absolute/path.sqlite3 or "
        "postgresql://user@host:port/db (shared by several gateways; the password in PGPASSWORD or "
        "~/.pgpass); None = sqlite under var_dir (profiles.sqlite3)",
    )
    profile_store_pool_size: int = Field(
        default=8, ge=1,
        description="PostgreSQL connections per gateway, and the threads that use them for store calls",
    )

    # privacy
    hmac_key: SecretStr = SecretStr(DEFAULT_HMAC_KEY)

    profile_encryption_key: SecretStr | None = Field(
        default=None, description="base64 of 32 random bytes: profiles encrypted at rest (AES-GCM)"
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings merges YAML < environment < overrides itself and passes the result in.
        return (init_settings,)

    def in_flight_limit(self, caller: str) -> tuple[int, str]:
        """The calls a caller (a platform, or "*" for operator keys) may have in flight at once,
        and the setting that says so: callers share the gateway by these limits (fair share)."""
        share = max(1, self.max_in_flight // 2)
        if caller == "*":
            return self.operator_max_in_flight or share, "operator_max_in_flight"
        platform = self.platforms.get(caller)
        if platform is None:
            return share, "max_in_flight/2"
        return platform.max_in_flight or share, f"platforms.{caller}.max_in_flight"

    def rate_limit(self, caller: str) -> tuple[float, str] | None:
        """The calls per second a platform's keys may make, and its setting; None: no limit."""
        platform = self.platforms.get(caller)
        if platform is None or platform.max_rps is None:
            return None
        return platform.max_rps, f"platforms.{caller}.max_rps"

    @property
    def triton_grpc_url(self) -> str:
        return f"{self.triton_host}:{self.triton_grpc_port}"

    @field_validator("profile_store")
    @classmethod
    def _known_engine(cls, url: str | None) -> str | None:
        return None if url is None else check_store_url(url)

    @property
    def store_url(self) -> str:
        """The profile store's URL (`profile_store`, or the SQLite file under var_dir)."""
        return self.profile_store or f"sqlite:///{self.var_dir / 'profiles.sqlite3'}"

    @property
    def store_path(self) -> Path:
        """The SQLite file of the profile store; ValueError when it is PostgreSQL."""
        if self.profile_store is None:
            return self.var_dir / "profiles.sqlite3"
        if not self.profile_store.startswith("sqlite:"):
            raise ValueError("the profile store is PostgreSQL (profile_store), not a file")
        return sqlite_path(self.profile_store)


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Read the YAML config (`INTEREST_CONFIG` or config/default.yaml), apply `INTEREST_*`
    env vars on top, then explicit `overrides` (callers' arguments win over everything)."""
    path = Path(config_file or os.environ.get("INTEREST_CONFIG") or DEFAULT_CONFIG_FILE)
    data: dict[str, Any] = {}
    if path.exists():
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
        data.update(loaded)
    elif config_file is not None:
        raise FileNotFoundError(f"config file {path} does not exist")
    _merge(data, EnvSettingsSource(Settings)())
    data.update(overrides)
    return Settings(**data)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> None:
    """Deep-merge `top` into `base` (nested env vars override single keys of a YAML mapping)."""
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
