"""Checks that a pipeline spec can run, done when it is loaded instead of when a run fails.

`check_columns` runs inside the pydantic model (every column the recipe uses is declared with a
dtype the recipe can use); `check_model` imports the estimator and tries its arguments. Messages
name the field and, for a misspelling, say what was probably meant.
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ml_platform.specs import PipelineSpec

NUMERIC = ("int", "float")
# Types a fitted estimator holds that skops does not trust by default, by the module the class
# lives in; the spec must list them. `ml-platform spec validate` also checks by fitting a tiny
# model, which catches estimators this table does not know.
TREE = "sklearn.tree._tree.Tree"
REQUIRED_TRUSTED_TYPES = {
    "sklearn.ensemble._hist_gradient_boosting": [
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"
    ],
    "sklearn.ensemble._forest": [TREE],
    "sklearn.ensemble._gb": [TREE],
    "sklearn.ensemble._bagging": [TREE],
    "sklearn.ensemble._weight_boosting": [TREE],
    "sklearn.tree": [TREE],
}


class SpecCheckError(ValueError):
    """A spec that parses but cannot run; the message starts with the field's path."""


def did_you_mean(value: str, choices: list[str]) -> str:
    """` (did you mean 'x'?)` for a near miss, else ''."""
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_columns(spec: PipelineSpec) -> None:
    """Every column the recipe uses is declared, once, with a dtype its role can use."""
    columns = spec.contract.columns
    declared = list(columns)
    roles: list[tuple[str, str]] = [
        *((f"entity_keys[{i}]", c) for i, c in enumerate(spec.entity_keys)),
        ("timestamp", spec.timestamp),
        ("target", spec.target),
        *((f"features.passthrough[{i}]", c) for i, c in enumerate(spec.features.passthrough)),
        *((f"features.categorical[{i}]", c) for i, c in enumerate(spec.features.categorical)),
    ]
    for where, column in roles:
        if column not in columns:
            raise ValueError(
                f"{where}: column {column!r} is not declared in contract.columns"
                f"{did_you_mean(column, declared)}; declared: {declared}"
            )
    if not spec.entity_keys:
        raise ValueError("entity_keys: name at least one column that identifies an entity")
    if columns[spec.timestamp].dtype != "date":
        raise ValueError(f"timestamp: column {spec.timestamp!r} must have dtype 'date'")
    for i, key in enumerate(spec.entity_keys):
        if columns[key].dtype not in ("str", "int") or columns[key].nullable:
            raise ValueError(f"entity_keys[{i}]: {key!r} must be a non-nullable str or int column")
    _check_target(spec)
    _check_feature_roles(spec)


def _check_target(spec: PipelineSpec) -> None:
    rule = spec.contract.columns[spec.target]
    if rule.nullable:
        raise ValueError(f"target: {spec.target!r} must not be nullable (a row needs its label)")
    if spec.is_classifier:
        _check_classes(spec, rule)
    elif rule.dtype not in NUMERIC:
        raise ValueError(
            f"target: a regression target must be int or float, {spec.target!r} is "
            f"{rule.dtype}; for a yes/no target use `task: classification`"
        )
    if not spec.is_classifier and spec.promotion.baseline_seasonal_period_days not in (
        spec.features.lags
    ):
        raise ValueError(
            "promotion.baseline_seasonal_period_days: "
            f"{spec.promotion.baseline_seasonal_period_days} must be one of features.lags "
            f"{spec.features.lags}: the seasonal-naive baseline is that lag"
        )


def _check_classes(spec: PipelineSpec, rule) -> None:
    """A binary target: 0/1 ints, or exactly two declared values and which one is positive."""
    values = list(rule.isin or [])
    positive = spec.model.positive_class
    zero_one = rule.dtype == "int" and sorted(values) == [0, 1]
    if zero_one and positive in (None, 1):
        return
    if len(values) == 2 and rule.dtype in ("str", "int") and positive in values:
        return
    raise ValueError(
        f"target: a classification target is either `{spec.target}: {{dtype: int, isin: [0, 1]}}` "
        f"(1 = the class to predict), or two declared values plus which is positive, e.g. "
        f"`{spec.target}: {{dtype: str, isin: [no, yes]}}` with `model.positive_class: yes`"
        f" (got dtype {rule.dtype}, isin {values or None}, positive_class {positive!r})"
    )


def _check_feature_roles(spec: PipelineSpec) -> None:
    columns = spec.contract.columns
    used: dict[str, str] = {}
    for role in ("passthrough", "categorical"):
        for column in getattr(spec.features, role):
            if column in used:
                raise ValueError(
                    f"features.{role}: {column!r} is already in features.{used[column]}"
                )
            used[column] = role
            if column in (spec.target, spec.timestamp):
                raise ValueError(
                    f"features.{role}: {column!r} is the target or the timestamp; use lags of "
                    "the target, or calendar features of the day"
                )
    for column in spec.features.passthrough:
        dtype = columns[column].dtype
        if dtype not in NUMERIC:
            hint = " (list it under features.categorical)" if dtype == "str" else ""
            raise ValueError(
                f"features.passthrough: {column!r} has dtype {dtype}; passthrough features "
                f"must be int or float{hint}"
            )
    for column in spec.features.categorical:
        if columns[column].dtype not in ("str", "int"):
            raise ValueError(
                f"features.categorical: {column!r} has dtype {columns[column].dtype}; "
                "categories must be str or int columns"
            )
    if not spec.feature_columns:
        raise ValueError("features: the recipe yields no feature columns; add lags or passthrough")


def estimator_class(path: str) -> type:
    """The estimator class named by `model.estimator`, or a SpecCheckError that says why not."""
    module_name, _, class_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        parent = module_name.rpartition(".")[0] or "sklearn"
        raise SpecCheckError(
            f"model.estimator: no module {module_name!r}"
            f"{_module_hint(parent, module_name.rpartition('.')[2])}"
        ) from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        public = [n for n in dir(module) if not n.startswith("_") and n[:1].isupper()]
        raise SpecCheckError(
            f"model.estimator: {module_name} has no class {class_name!r}"
            f"{did_you_mean(class_name, public)}"
        )
    return cls


def _module_hint(parent: str, name: str) -> str:
    try:
        package = importlib.import_module(parent)
    except ImportError:
        return ""
    names = [n for n in dir(package) if not n.startswith("_")]
    hint = did_you_mean(name, names)
    return hint.replace("did you mean '", f"did you mean '{parent}.") if hint else ""


def check_model(spec: PipelineSpec) -> None:
    """The estimator exists, suits the task, accepts its arguments, and loads back with skops."""
    from sklearn.base import is_classifier, is_regressor

    cls = estimator_class(spec.model.estimator)
    try:
        estimator = cls(**spec.model.params)
    except TypeError as exc:
        raise SpecCheckError(f"model.params: {spec.model.estimator} rejects them: {exc}") from None
    fits = is_classifier(estimator) if spec.is_classifier else is_regressor(estimator)
    if not fits:
        kind = "classifier" if spec.is_classifier else "regressor"
        other = "regression" if spec.is_classifier else "classification"
        raise SpecCheckError(
            f"model.estimator: {spec.model.estimator} is not a scikit-learn {kind}, which "
            f"`task: {spec.task}` needs (is the task meant to be {other}?)"
        )
    if spec.is_classifier and not hasattr(estimator, "predict_proba"):
        raise SpecCheckError(
            f"model.estimator: {spec.model.estimator} has no predict_proba; classification "
            "needs probabilities (for log loss, ROC AUC and Brier score)"
        )
    _check_params(estimator, spec)
    _check_trusted_types(cls, spec.model.skops_trusted_types)


def _check_params(estimator: Any, spec: PipelineSpec) -> None:
    validate = getattr(estimator, "_validate_params", None)
    if validate is None:
        return
    try:
        validate()
    except (ValueError, TypeError) as exc:
        raise SpecCheckError(f"model.params: {exc}") from None


def _check_trusted_types(cls: type, trusted: list[str]) -> None:
    for i, name in enumerate(trusted):
        module_name, _, attr = name.rpartition(".")
        try:
            found = getattr(importlib.import_module(module_name), attr, None)
        except ImportError:
            found = None
        if not isinstance(found, type):
            raise SpecCheckError(f"model.skops_trusted_types[{i}]: no class {name!r}")
    for module, required in REQUIRED_TRUSTED_TYPES.items():
        missing = [t for t in required if t not in trusted]
        if cls.__module__.startswith(module) and missing:
            raise SpecCheckError(missing_types_message(cls.__name__, missing))


def missing_types_message(estimator: str, missing: list[str]) -> str:
    return (
        f"model.skops_trusted_types: {estimator} models hold {missing}; list them so the saved "
        "model can be loaded with skops (never pickle)"
    )
