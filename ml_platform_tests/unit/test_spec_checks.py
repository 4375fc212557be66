"""Spec mistakes a new user makes: each gets one clear message at load time, naming the field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ml_platform.specs import SPEC_DIR, SpecError, load_spec, load_specs_isolated

REPO_ROOT = Path(__file__).resolve().parents[2]


def _write(folder: Path, base: str, edit, name: str | None = None) -> Path:
    """A copy of a shipped spec with `edit(raw)` applied, under `folder` (params.yaml beside)."""
    raw = yaml.safe_load((SPEC_DIR / f"{base}.yaml").read_text())
    edit(raw)
    if name:
        raw["name"] = name
    path = folder / "specs" / f"{raw['name']}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def _error(path: Path, root: Path) -> str:
    with pytest.raises(SpecError) as caught:
        load_spec(path, root)
    message = str(caught.value)
    assert str(path) in message  # the file is named
    assert "Traceback" not in message
    return message


def test_shipped_specs_load_one_of_each_task():
    specs, errors = load_specs_isolated(SPEC_DIR, REPO_ROOT)
    assert errors == {}
    assert {s.task for s in specs} == {"regression", "classification"}


def test_misspelled_column_names_the_field_and_suggests(folder):
    def edit(raw):
        raw["features"]["passthrough"] = ["prise", "promo"]

    message = _error(_write(folder, "sales_forecast", edit), folder)
    assert "features.passthrough[0]" in message
    assert "did you mean 'price'" in message


def test_misspelled_estimator_suggests_the_class(folder):
    def edit(raw):
        raw["model"]["estimator"] = "sklearn.ensemble.RandomForrestRegressor"
        raw["model"]["params_file"] = None
        raw["model"]["skops_trusted_types"] = []

    message = _error(_write(folder, "sales_forecast", edit), folder)
    assert "model.estimator" in message
    assert "did you mean 'RandomForestRegressor'" in message


def test_misspelled_estimator_module(folder):
    def edit(raw):
        raw["model"]["estimator"] = "sklearn.ensembel.RandomForestRegressor"

    message = _error(_write(folder, "sales_forecast", edit), folder)
    assert "no module 'sklearn.ensembel'" in message
    assert "sklearn.ensemble" in message


def test_classifier_under_the_regression_task(folder):
    def edit(raw):
        raw["model"]["estimator"] = "sklearn.ensemble.HistGradientBoostingClassifier"

    message = _error(_write(folder, "sales_forecast", edit), folder)
    assert "model.estimator" in message and "not a scikit-learn regressor" in message
    assert "task: regression" in message


def test_regressor_under_the_classification_task(folder):
    def edit(raw):
        raw["model"]["estimator"] = "sklearn.linear_model.Ridge"
        raw["model"]["params_file"] = None
        raw["model"]["skops_trusted_types"] = []

    message = _error(_write(folder, "customer_churn", edit), folder)
    assert "not a scikit-learn classifier" in message


def test_string_column_as_a_numeric_feature_points_to_categorical(folder):
    def edit(raw):
        raw["features"]["passthrough"] = ["sessions", "plan"]
        raw["features"]["categorical"] = ["region"]

    message = _error(_write(folder, "customer_churn", edit), folder)
    assert "features.passthrough" in message and "'plan' has dtype str" in message
    assert "features.categorical" in message


def test_classification_target_must_be_zero_one(folder):
    def edit(raw):
        raw["contract"]["columns"]["churned"] = {"dtype": "float"}

    message = _error(_write(folder, "customer_churn", edit), folder)
    assert "target:" in message and "isin: [0, 1]" in message


def test_unknown_field_suggests_the_known_one(folder):
    def edit(raw):
        raw["features"]["rolling_mean"] = raw["features"].pop("rolling_means")

    message = _error(_write(folder, "sales_forecast", edit), folder)
    assert "features.rolling_mean: unknown field (did you mean 'rolling_means'?)" in message


def test_bad_estimator_arguments_fail_at_load(folder):
    def edit(raw):
        raw["model"]["params"] = {"max_iter": -5}

    message = _error(_write(folder, "sales_forecast", edit), folder)
    assert "model.params" in message and "max_iter" in message


def test_unknown_estimator_argument(folder):
    def edit(raw):
        raw["model"]["params"] = {"n_estimatorz": 5}

    assert "model.params" in _error(_write(folder, "sales_forecast", edit), folder)


def test_missing_trusted_type_for_hist_gradient_boosting(folder):
    def edit(raw):
        raw["model"]["skops_trusted_types"] = []

    message = _error(_write(folder, "sales_forecast", edit), folder)
    assert "model.skops_trusted_types" in message and "TreePredictor" in message


def test_misspelled_trusted_type(folder):
    def edit(raw):
        raw["model"]["skops_trusted_types"].append("sklearn.tree._tree.Trea")

    assert "model.skops_trusted_types[1]" in _error(_write(folder, "sales_forecast", edit), folder)


def test_params_file_without_the_pipelines_section(folder):
    (folder / "params.yaml").write_text("other_pipeline: {model: {max_iter: 3}}\n")
    message = _error(_write(folder, "sales_forecast", lambda raw: None), folder)
    assert "model.params_file" in message and "sales_forecast: model:" in message


@pytest.mark.parametrize("value", ["/etc/passwd", "../../params.yaml"])
def test_params_file_outside_the_project_is_refused(folder, value):
    def edit(raw):
        raw["model"]["params_file"] = value

    message = _error(_write(folder, "sales_forecast", edit), folder)
    assert "model.params_file must be a path inside the project" in message


@pytest.mark.parametrize("value", ["/etc", "../../tmp/x", ""])
def test_landing_directory_outside_the_project_is_refused(folder, value):
    def edit(raw):
        raw["landing"]["directory"] = value

    assert "landing.directory" in _error(_write(folder, "sales_forecast", edit), folder)


def test_name_must_match_the_file(folder):
    path = _write(folder, "sales_forecast", lambda raw: None)
    moved = path.rename(path.parent / "renamed.yaml")
    assert "must match the file name" in _error(moved, folder)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "name: [unclosed\n", "\x00\x01binary"])
def test_unreadable_or_non_mapping_spec(folder, text):
    path = folder / "junk.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=r"junk\.yaml"):
        load_spec(path, folder)


def test_holidays_accept_full_dates_and_refuse_impossible_ones(folder):
    def good(raw):
        raw["features"]["holidays"] = ["12-25", "2024-03-29", "02-29"]

    assert load_spec(_write(folder, "sales_forecast", good), folder).features.holidays[1] == (
        "2024-03-29"
    )

    def bad(raw):
        raw["features"]["holidays"] = ["13-40"]

    assert "features.holidays" in _error(_write(folder, "sales_forecast", bad), folder)


def test_one_broken_spec_never_hides_the_others(folder):
    _write(folder, "sales_forecast", lambda raw: None)
    _write(folder, "customer_churn", lambda raw: None)

    def broken(raw):
        raw["target"] = "unit_sold"
        raw["model"]["params_file"] = None

    _write(folder, "sales_forecast", broken, name="broken_team")
    specs, errors = load_specs_isolated(folder / "specs", folder)
    assert [s.name for s in specs] == ["customer_churn", "sales_forecast"]
    assert list(errors) == ["broken_team.yaml"]
    assert "did you mean 'units_sold'" in errors["broken_team.yaml"]


def test_a_yes_no_target_needs_its_positive_class(folder):
    def edit(raw):
        raw["contract"]["columns"]["churned"] = {"dtype": "str", "isin": ["no", "yes"]}

    message = _error(_write(folder, "customer_churn", edit), folder)
    assert "model.positive_class: yes" in message

    def fixed(raw):
        edit(raw)
        raw["model"]["positive_class"] = "yes"

    assert load_spec(_write(folder, "customer_churn", fixed), folder).model.positive_class == "yes"


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"dtype": "str", "pattern": "^S(\\d{4}$"}, "is not a regular expression"),
        ({"dtype": "int", "pattern": "^\\d+$"}, "pattern applies to str columns"),
        ({"dtype": "str", "ge": 0}, "apply to int and float columns"),
        ({"dtype": "float", "format": "%Y"}, "format applies to date columns"),
        ({"dtype": "date", "format": "%Y-%m"}, "does not read back a full date"),
    ],
)
def test_column_rules_that_cannot_work_fail_at_load(folder, rule, expected):
    def edit(raw):
        raw["contract"]["columns"]["store_id"] = rule

    message = _error(_write(folder, "sales_forecast", edit), folder)
    assert "contract.columns.store_id" in message and expected in message
