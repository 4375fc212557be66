"""What one serving worker holds for a pipeline: its champion, its canary and the canary's weight.

The registry is the single source of truth: the `champion` and `canary` aliases say which versions
serve, the registered model's `ml_platform.canary_weight` tag what share of requests the canary
gets, and its `ml_platform.canary_policy` tag how they are routed (written when the release
began). A background thread polls it and swaps in a new immutable `Snapshot` when anything moved.
A request reads the snapshot once, so a reload never fails a request in flight.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ml_platform.core import training
from ml_platform.core.canary import POLICY_TAG, CanaryPolicy
from ml_platform.names import CANARY, CANARY_WEIGHT_TAG, CHAMPION
from ml_platform.resources.model_loader import load_version
from ml_platform.specs import PipelineSpec

log = logging.getLogger("ml_platform.serving")


@dataclass(frozen=True)
class LoadedModel:
    version: int
    model: Any
    columns_checked: bool = False  # fitted on exactly the spec's feature columns, in order


def fitted_on(model: Any, columns: list[str]) -> bool:
    """True when the model was fitted on these columns in this order (so a bare matrix is safe);
    a model fitted on other columns cannot serve this spec at all."""
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        return False
    if list(names) != list(columns):
        raise ValueError(f"model was fitted on {list(names)}, the spec serves {list(columns)}")
    return True


@dataclass(frozen=True)
class Snapshot:
    champion: LoadedModel | None = None
    canary: LoadedModel | None = None
    canary_weight: float = 0.0
    affinity: str = "auto"  # how the canary's share is routed (serving/routing.py)
    min_sticky_entities: int = 5000

    def describe(self) -> dict[str, Any]:
        return {
            "champion": None if self.champion is None else self.champion.version,
            "canary": None if self.canary is None else self.canary.version,
            "canary_weight": self.canary_weight,
            "affinity": self.affinity,
        }


def canary_weight(tags: dict[str, str]) -> float:
    """The canary's share in percent, as the release service last set it (0 without a tag: the
    release writes the tag before the alias, so a missing tag means no release is in flight)."""
    try:
        weight = float(tags.get(CANARY_WEIGHT_TAG, 0.0))
    except ValueError:
        return 0.0
    return min(max(weight, 0.0), 100.0) if weight == weight else 0.0


def release_policy(tags: dict[str, str]) -> CanaryPolicy:
    """The routing policy the release wrote to the registry (defaults when absent or unreadable)."""
    try:
        return CanaryPolicy.from_json(tags[POLICY_TAG])
    except (KeyError, ValueError, TypeError):
        return CanaryPolicy()


class ModelSlots:
    """The current `Snapshot` for one pipeline, refreshed from the registry."""

    def __init__(self, spec: PipelineSpec, client: MlflowClient) -> None:
        self.spec = spec
        self.client = client
        self.snapshot = Snapshot()
        self.last_error: str | None = None
        self.has_champion_alias = False  # the registry names a champion for this pipeline

    @property
    def ready(self) -> bool:
        """Serving what the registry says: a pipeline with no champion yet has nothing to load
        (its requests get 503), so it never holds the whole server back."""
        return self.snapshot.champion is not None or not self.has_champion_alias

    def refresh(self) -> bool:
        """Re-read aliases and weight; load changed versions. True when the snapshot changed."""
        try:
            registered = self.client.get_registered_model(self.spec.name)
        except MlflowException:
            self.last_error = f"no registered model {self.spec.name!r} yet"
            return False
        aliases = registered.aliases or {}
        self.has_champion_alias = CHAMPION in aliases
        current = self.snapshot
        errors: list[str] = []
        champion = self._resolve(aliases.get(CHAMPION), current.champion, CHAMPION, errors)
        canary = self._resolve(aliases.get(CANARY), current.canary, CANARY, errors)
        tags = registered.tags or {}
        weight = canary_weight(tags) if canary is not None else 0.0
        policy = release_policy(tags)
        new = Snapshot(champion, canary, weight, policy.affinity, policy.min_sticky_entities)
        # What this refresh found, and only that: an alias moved back to a good version clears
        # the error of the bad one, even when the good one was still loaded.
        self.last_error = "; ".join(errors) or None
        if new == current:
            return False
        self.snapshot = new
        log.info("%s now serves %s", self.spec.name, new.describe())
        return True

    def _resolve(
        self, version: str | None, loaded: LoadedModel | None, alias: str, errors: list[str]
    ) -> LoadedModel | None:
        if version is None:
            return None
        if loaded is not None and str(loaded.version) == str(version):
            return loaded
        try:
            model = load_version(
                self.client, self.spec.name, version, training.trusted_types(self.spec)
            )
            checked = fitted_on(model, self.spec.feature_columns)
        except Exception as exc:  # keep serving what we have rather than nothing
            errors.append(f"could not load {self.spec.name} v{version} ({alias}): {exc}")
            log.error(errors[-1])
            return loaded if alias == CHAMPION else None
        return LoadedModel(version=int(version), model=model, columns_checked=checked)


class Reloader:
    """Polls the registry every `interval` seconds on a daemon thread."""

    def __init__(self, slots: list[ModelSlots], interval: float) -> None:
        self.slots = slots
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-reloader", daemon=True)

    def refresh_all(self) -> None:
        for slot in self.slots:
            try:
                slot.refresh()
            except Exception:  # never let one bad poll kill the thread
                log.exception("refreshing %s from the registry failed", slot.spec.name)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh_all()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
