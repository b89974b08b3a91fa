"""grpc.aio server for interest.v1.InterestGateway with health checking, reflection and a
Prometheus /metrics endpoint.

Health is NOT_SERVING until the profile store answers (its schema brought up to date),
Triton answers ready and every catalogue index is loaded, and goes back to NOT_SERVING
whenever Triton or the profile store stops answering (checked each second); calls that need
the store while it is down answer UNAVAILABLE. On SIGTERM it turns NOT_SERVING, keeps
answering for `shutdown_drain_s` so that clients move to other gateways, then refuses new calls
and lets in-flight ones finish within `shutdown_grace_s`.

Each platform's catalogue (ids, titles, popularity and the served model's item embeddings) is
read at creation from the files `make engine` installed beside the model, checked against the
digests in VERSION.json: start-up reads no dataset and embeds nothing. Missing or altered
catalogue files stop the gateway from starting.

Trained ranking assets (learned migration, collaborative blend, interest categories) are
read at creation from settings.ranking_assets, by default the `interest_assets.npz` that
`quantize.install` puts beside the model; without that file the pretrained model is served
as is. An unreadable or mismatched assets file stops the gateway from starting.

API keys from settings.api_keys_file are re-read on SIGHUP and when the file changes, without
a restart (gateway.auth.KeySource).

    python -m gateway.server [--config FILE]      # needs a running Triton (see devtools.stack)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import logging
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import _async as health_aio  # what grpc_health.v1.health.aio re-exports
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from gateway.auth import KeyFileError, KeySource
from gateway.catalogue import CatalogueFollower, ModelMismatch, check_same_model
from gateway.encoder import TritonEncoder
from gateway.errors import SHARED, ErrorAndMetricsInterceptor
from gateway.metrics import GatewayMetrics
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from gateway.servicer import InterestGatewayService
from interest_core.catalogue import CatalogueNotInstalled, InstalledCatalogue, read_installed
from interest_core.config import DEFAULT_HMAC_KEY, Settings, load_settings
from interest_core.contract import ASSETS_FILE, read_version
from interest_core.errors import Unavailable
from interest_core.migration import MigrationMap
from interest_core.profiles import ProfileCipher
from interest_core.ranking.ann import AnnIndex
from interest_core.ranking.assets import RankingAssets
from interest_core.stores import open_store

log = logging.getLogger("interest.gateway")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InterestGateway"].full_name


class StartupError(RuntimeError):
    """The gateway cannot start with what is configured or installed; the message says why."""


@dataclass
class Gateway:
    """A created (not yet started) gateway and what it owns."""

    server: grpc.aio.Server
    port: int
    settings: Settings
    service: InterestGatewayService
    health: health_aio.HealthServicer
    metrics: GatewayMetrics
    catalogues: dict[str, InstalledCatalogue]
    titles: dict[str, dict[str, str]]  # the adapters' item titles: catalogue updates add to them
    model_version: str
    keys: KeySource | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    serving: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        log.info("gateway listening on %s:%d (NOT_SERVING until the profile store, Triton and "
                 "catalogues are ready)",
                 self.settings.grpc_host, self.port)
        self.tasks.append(asyncio.create_task(self._startup(), name="startup"))
        if self.keys is not None and self.keys.path is not None:
            self.tasks.append(asyncio.create_task(self.keys.watch(self.settings.api_keys_poll_s),
                                                  name="api-keys-watch"))

    def reload_keys(self, reason: str = "SIGHUP") -> bool:
        """Serve the keys file's keys now (SIGHUP); a bad file keeps the old keys. True when replaced."""
        if self.keys is None or self.keys.path is None:
            log.warning("%s: no api_keys_file is configured; keys from the environment or the YAML "
                        "config change only with a restart", reason)
            return False
        return self.keys.reload(reason)

    async def _set(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def _startup(self) -> None:
        """Wait for the profile store and Triton, then serve the catalogues; retried with
        backoff until it succeeds."""
        delay = 1.0
        while not await self._try_startup():
            log.warning("gateway start-up will be retried in %.0fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        self.tasks.append(asyncio.create_task(self._watch_dependencies(), name="health-watch"))
        if self.service.catalogues is not None:
            self.tasks.append(asyncio.create_task(
                self.service.catalogues.follow(self.settings.catalogue_poll_s), name="catalogue-follow"))

    async def _try_startup(self) -> bool:
        svc = self.service
        try:
            await asyncio.to_thread(svc.store.prepare)  # connects, brings the schema up to date
        except Unavailable:
            log.warning("%s cannot be reached; staying NOT_SERVING", svc.store.description)
            return False
        except Exception:
            log.exception("%s cannot be used; staying NOT_SERVING", svc.store.description)
            return False
        try:
            while not await svc.encoder.ready():
                log.info("waiting for Triton at %s to report %s ready", svc.encoder.url,
                         self.settings.model_name)
                await asyncio.sleep(1.0)
            # The version the catalogues were installed with, whose embeddings they hold.
            svc.model_version = self.model_version
            probe = next(iter(self.catalogues.values()), None)  # one catalogue tells
            if probe is not None:
                cosine = await check_same_model(svc.encoder, probe, self.model_version)
                log.info("Triton serves the installed model %s (its embeddings of catalogue titles "
                         "agree to cosine %.4f)", self.model_version, cosine)
            indexes = await asyncio.to_thread(open_indexes, self.settings, self.catalogues)
            if svc.catalogues is not None:  # (an earlier try got this far): its builds stop
                await svc.catalogues.close()
                svc.catalogues = None
            follower = CatalogueFollower(svc.book, svc.recommender, svc.encoder, self.metrics,
                                         self.catalogues, self.titles, self.model_version, indexes,
                                         self.settings.ann_added_index_min)
            await follower.start()  # the installed catalogues plus the store's catalogue log
            svc.catalogues = follower
            for name in self.catalogues:
                svc.mark_rank_paths(name)
            settle_heap()
            await self._set(health_pb2.HealthCheckResponse.SERVING)
            self.serving.set()
            log.info("gateway SERVING (model version %s)", svc.model_version)
            return True
        except ModelMismatch as exc:
            log.error("%s; staying NOT_SERVING", exc)
            return False
        except Exception:
            log.exception("gateway start-up failed; staying NOT_SERVING")
            return False

    async def _watch_dependencies(self, period_s: float = 1.0) -> None:
        """Follow Triton's readiness and the profile store's answer to a trivial query into the
        health status, both ways: SERVING while both answer, NOT_SERVING while either does not
        (a load balancer or a client with health checking then sends calls to other gateways)."""
        up = {"Triton": True, "the profile store": True}
        while True:
            await asyncio.sleep(period_s)
            now = {"Triton": await self.service.encoder.ready(),
                   "the profile store": await self._store_answers()}
            self.metrics.triton_ready.set(1 if now["Triton"] else 0)
            if now == up:
                continue
            for name in now:
                if now[name] != up[name]:
                    log.warning("%s is %s", name if name == "Triton" else self.service.store.description,
                                "back" if now[name] else "unreachable")
            up = now
            serving = all(up.values())
            log.warning("health -> %s", "SERVING" if serving else
                        f"NOT_SERVING ({', '.join(n for n, ok in up.items() if not ok)} down)")
            await self._set(health_pb2.HealthCheckResponse.SERVING if serving
                            else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _store_answers(self, timeout_s: float = 3.0) -> bool:
        store = self.service.store
        try:
            if store.remote:
                await asyncio.wait_for(asyncio.to_thread(store.ping), timeout_s)
            else:  # SQLite: a local file answers at once, and no thread outlives a close
                store.ping()
            up = True
        except (TimeoutError, Unavailable):
            up = False
        except Exception:
            log.exception("%s health check failed", store.description)
            up = False
        self.metrics.store_seen(up, store.pool_stats())
        return up

    async def drain(self) -> None:
        """NOT_SERVING now, then wait `shutdown_drain_s` while still answering: clients with
        health checking and load balancers move to other gateways before `stop` refuses calls."""
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.settings.shutdown_drain_s > 0:
            log.info("draining: NOT_SERVING for %.1fs before refusing new calls",
                     self.settings.shutdown_drain_s)
            await asyncio.sleep(self.settings.shutdown_drain_s)

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new RPCs, let in-flight ones finish within `grace`, then close."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace_s if grace is None else grace)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.service.catalogues is not None:
            await self.service.catalogues.close()
        await self.service.encoder.close()
        self.service.close()


def installed_version(settings: Settings) -> dict[str, object]:
    """The installed model's VERSION.json; StartupError when no model is installed."""
    try:
        return read_version(settings.model_repository / settings.model_name)
    except Unavailable as exc:
        raise StartupError(str(exc)) from exc


def load_catalogues(settings: Settings, version: dict[str, object]) -> dict[str, InstalledCatalogue]:
    """Each configured platform's catalogue as `make engine` installed it (catalogue_limit
    applied); StartupError when one is missing or does not match VERSION.json."""
    model_dir = settings.model_repository / settings.model_name
    out: dict[str, InstalledCatalogue] = {}
    for name in settings.platforms:
        try:
            out[name] = read_installed(model_dir, name, version, settings.catalogue_limit)
        except (CatalogueNotInstalled, OSError, ValueError, KeyError) as exc:
            raise StartupError(f"cannot serve the catalogue of {name!r} installed in {model_dir}: {exc}; "
                               f"run `make engine` (with this config) to install the model and its "
                               f"catalogues together") from exc
        log.info("catalogue %s: %d items and their embeddings, as installed with model %s", name,
                 len(out[name].catalogue), version.get("model_version"))
    return out


def open_indexes(settings: Settings, catalogues: Mapping[str, InstalledCatalogue]) -> dict[str, AnnIndex]:
    """The nearest-neighbour index of each catalogue of at least settings.ann_min_items items,
    memory-mapped from the file `make engine` stored beside it (not rebuilt)."""
    out: dict[str, AnnIndex] = {}
    for name, installed in catalogues.items():
        n = len(installed.catalogue)
        if n < settings.ann_min_items:
            continue
        if installed.index_path is None:
            log.warning("catalogue %s: %d items (>= ann_min_items %d) but no nearest-neighbour index is "
                        "installed: every Recommend scores it whole (slow at this size); run `make "
                        "engine` to build the index", name, n, settings.ann_min_items)
            continue
        started = time.monotonic()
        out[name] = AnnIndex.load(installed.index_path, settings.ann_ef_search)
        log.info("catalogue %s: ranked through its index %s (%d items, efSearch %d, %d candidates), "
                 "read and mapped in %.2fs", name, installed.index_path.name, len(out[name]),
                 settings.ann_ef_search, settings.ann_candidates, time.monotonic() - started)
    return out


def ranking_assets_path(settings: Settings) -> Path:
    """settings.ranking_assets, else the assets installed beside the model."""
    return settings.ranking_assets or settings.model_repository / settings.model_name / ASSETS_FILE


def load_ranking_assets(settings: Settings, dim: int) -> RankingAssets | None:
    """The trained ranking assets, checked against the installed model's embedding size `dim`;
    None (pretrained model served as is) when none are configured or installed."""
    path = ranking_assets_path(settings)
    if not path.exists():
        if settings.ranking_assets is not None:
            raise StartupError(f"ranking_assets {path} does not exist")
        legacy = settings.var_dir / "migration.npz"
        log.info("serving the pretrained model without trained assets (no %s): %s migration, no "
                 "collaborative blend, no interest categories", path,
                 f"{legacy}" if legacy.exists() else "identity")
        return None
    try:
        assets = RankingAssets.load(path)
    except Exception as exc:
        raise StartupError(f"cannot read the trained ranking assets {path} ({type(exc).__name__}: "
                           f"{exc}); reinstall them with `make engine CHECKPOINT=...` or remove the "
                           f"file to serve the pretrained model without them") from exc
    check_ranking_assets(assets, dim, path, settings.model_name)
    if not set(assets.item_ids) & set(settings.platforms):
        raise StartupError(
            f"the ranking assets {path} were trained for the platforms {', '.join(sorted(assets.item_ids))}, "
            f"but this config serves {', '.join(settings.platforms)}: install the checkpoint trained on "
            f"this pair (make engine DATASET=... CONFIG=...)")
    blends = ", ".join(f"{s}->{t} cooc {b.cooc:g} pop {b.pop:g}"
                       for (s, t), b in sorted(assets.blend.items()))
    log.info("trained ranking assets %s: learned migration %s; blend %s; %d interest categories", path,
             ", ".join(f"{s}->{t}" for s, t in sorted(assets.migration)) or "none", blends or "none",
             len(assets.category_names))
    return assets


def check_ranking_assets(assets: RankingAssets, dim: int, path: Path, model_name: str = "") -> None:
    """Refuse assets whose sizes do not fit the installed model (dim) or themselves."""
    model = f"the installed model {model_name}".rstrip()
    for (s, t), w in sorted(assets.migration.items()):
        if w.shape != (dim, dim):
            raise StartupError(
                f"the ranking assets {path} were trained for another embedding size: migration "
                f"{s}->{t} is {w.shape[0]}x{w.shape[1]} but {model} embeds into {dim} dimensions; "
                f"install the model and the assets of the same checkpoint (make engine CHECKPOINT=...)")
    weights = assets.category_weights
    if weights is not None and weights.shape != (len(assets.category_names), dim):
        raise StartupError(
            f"the ranking assets {path} hold interest categories of shape {weights.shape}, expected "
            f"({len(assets.category_names)}, {dim}) for {len(assets.category_names)} names and "
            f"{model} ({dim} dimensions)")
    sizes = {p: len(ids) for p, ids in assets.item_ids.items()}
    for (s, t), m in sorted(assets.cooccurrence.items()):
        if m.shape != (sizes.get(s, -1), sizes.get(t, -1)):
            raise StartupError(f"the ranking assets {path} are inconsistent: co-occurrence {s}->{t} is "
                               f"{m.shape}, its item lists have {sizes.get(s)} and {sizes.get(t)} items")
    for p, counts in sorted(assets.popularity.items()):
        if counts.shape != (sizes.get(p, -1),):
            raise StartupError(f"the ranking assets {path} are inconsistent: popularity of {p} has "
                               f"shape {counts.shape}, its item list has {sizes.get(p)} items")


def create_server(
    settings: Settings, metrics: GatewayMetrics | None = None, triton_url: str | None = None,
    port: int | None = None,
) -> Gateway:
    """Build the gateway on `port` (default settings.grpc_port; 0 picks a free one).
    Raises StartupError when no model is installed, or its catalogues or the configured or
    installed ranking assets cannot be served."""
    version = installed_version(settings)
    dim = int(version.get("dim", 384))  # type: ignore[call-overload]
    catalogues = load_catalogues(settings, version)
    assets = load_ranking_assets(settings, dim)
    migration = (MigrationMap(dim, assets.migration) if assets is not None
                 else MigrationMap.load(dim, settings.var_dir / "migration.npz"))
    metrics = metrics or GatewayMetrics()
    encoder = TritonEncoder(settings, metrics, url=triton_url)
    titles = {name: dict(zip(c.catalogue.item_ids, c.catalogue.titles)) for name, c in catalogues.items()}
    cipher = None
    if settings.profile_encryption_key is not None:
        cipher = ProfileCipher(base64.b64decode(settings.profile_encryption_key.get_secret_value()))
    store = open_store(settings.store_url, cipher, settings.profile_store_pool_size)
    popularity = {name: c.popularity for name, c in catalogues.items()}
    service = InterestGatewayService(settings, store, encoder, metrics, migration, titles, popularity,
                                     assets)
    keys = KeySource(service.auth, settings.api_keys, settings.api_keys_file, settings.platforms,
                     on_reload=metrics.keys_loaded)
    try:
        keys.load()
    except KeyFileError as exc:
        raise StartupError(f"{exc}; fix api_keys_file (format: docs/operations.md)") from exc
    interceptor = ErrorAndMetricsInterceptor(metrics, settings.max_in_flight, authorizer=service.auth,
                                             caller_limit=settings.in_flight_limit,
                                             share_pushback_s=settings.share_pushback_s,
                                             caller_rate=settings.rate_limit)
    # each caller's share (and refusals, at 0) on /metrics from the start
    for caller in (*settings.platforms, "*") if service.auth.enabled else (SHARED,):
        interceptor.limit_of(caller)
    server = grpc.aio.server(interceptors=[interceptor], options=server_options(settings))
    pb_grpc.add_InterestGatewayServicer_to_server(service, server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    address = f"{settings.grpc_host}:{settings.grpc_port if port is None else port}"
    credentials = server_credentials(settings)
    bound = (server.add_secure_port(address, credentials) if credentials is not None
             else server.add_insecure_port(address))
    if settings.hmac_key.get_secret_value() == DEFAULT_HMAC_KEY:
        log.warning("INTEREST_HMAC_KEY is the public development default: pseudonyms are reversible "
                    "by anyone who guesses user ids; set a secret key in production")
    if not service.auth.enabled:
        log.warning("no API keys configured: the gateway accepts every caller (development mode)")
    return Gateway(server, bound, settings, service, health_servicer, metrics, catalogues, titles,
                   str(version["model_version"]), keys)


def settle_heap() -> int:
    """Move everything start-up built (catalogues, titles, assets: many tracked objects) out of
    the garbage collector's reach, so that a full collection under load walks only what came
    after: a full collection over them stops every thread. Returns the objects frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("froze %d start-up objects out of the garbage collector's full collections", frozen)
    return frozen


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """gRPC core options. The two queue limits shed load that the interceptor cannot see: when
    the event loop is saturated by in-loop CPU (Recommend's blend and ranking), it takes new
    calls from gRPC's core no faster than it answers them, so the backlog grows there, not in
    `max_in_flight`, and every queued call waits out its deadline. Past the soft limit gRPC
    refuses new calls with a probability rising to 1 at the hard limit (random early detection);
    the client sees CANCELLED at once, instead of every queued call waiting out its deadline
    (more calls answered in time under overload than without the limits)."""
    return [
        ("grpc.max_receive_message_length", 8 * 1024 * 1024),
        ("grpc.server.max_pending_requests", settings.max_queued_rpcs // 2),
        ("grpc.server.max_pending_requests_hard_limit", settings.max_queued_rpcs),
    ]


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS when a certificate is configured; mutual TLS when a client CA is configured too."""
    if settings.tls_cert_file is None:
        return None
    if settings.tls_key_file is None:
        raise ValueError("tls_cert_file is set but tls_key_file is not")
    ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=ca, require_client_auth=ca is not None,
    )


async def run_gateway(settings: Settings, triton_url: str | None = None) -> Gateway:
    """Create, start and serve /metrics; returns once started (caller awaits `stop`)."""
    metrics = GatewayMetrics()
    metrics.watch_gc()
    start_http_server(settings.metrics_port, addr=settings.grpc_host, registry=metrics.registry)
    log.info("gateway metrics on http://%s:%d/metrics", settings.grpc_host, settings.metrics_port)
    gw = create_server(settings, metrics, triton_url)
    await gw.start()
    # SIGHUP re-reads the API keys file (`make serve` and `python -m gateway.server` alike)
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, gw.reload_keys)
    return gw


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    gw = await run_gateway(settings)
    await stop.wait()
    await gw.drain()
    log.info("shutting down: refusing new calls, finishing in-flight ones (grace %.1fs)",
             settings.shutdown_grace_s)
    await gw.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="YAML config file")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    setup_logging(settings.log_level)
    try:
        asyncio.run(_main(settings))
    except StartupError as exc:
        log.error("gateway not started: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
