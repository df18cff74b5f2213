"""The CircuitBreakerPolicy CRD on a real API server: what it accepts, refuses, shows and explains.

The invalid manifests come from the table the unit suite runs through `breakwater validate`
(tests/cluster/data/invalid_policies.yaml): here each must also be refused by `kubectl apply`, naming
the same field, and for cross-field rules printing the same message.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from breakwater.api import (
    CircuitBreakerPolicyStatus,
    Condition,
    PodCounts,
    StatusSummary,
    UpstreamStatus,
    parse_policy,
    parse_spec,
)
from breakwater.api.constants import CRD_NAME
from breakwater.api.manifests import load_documents
from breakwater.api.rules import ALL_RULES
from breakwater.api.validate import validate_text
from tests.conftest import Cluster
from tests.unit.api.invalid_table import CASES, EXAMPLES, REPO, InvalidCase, base_manifest
from tests.unit.api.strategies import specs

pytestmark = pytest.mark.cluster

CRD = REPO / "crds" / "breakwater.dev_circuitbreakerpolicies.yaml"
RULES = {rule.id: rule for rule in ALL_RULES}
MINIMAL = (REPO / "examples" / "minimal.yaml").read_text()


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> str:
    """The generated CRD, applied as `make crds` writes it, Established and served."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.wait_established(CRD_NAME)
    cluster.wait_for(
        "cbp to be served", lambda: cluster.kubectl("get", "cbp", "-A", check=False).returncode == 0
    )
    return CRD_NAME


@pytest.fixture(scope="module")
def table_namespace(cluster: Cluster, crd: str) -> Iterator[str]:
    """One namespace for the refusal tests: a refused manifest never creates anything."""
    name = f"api-admission-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply(cluster: Cluster, namespace: str, text: str, *extra: str) -> Any:
    return cluster.kubectl("apply", "-n", namespace, *extra, "-f", "-", input=text, check=False)


def validate(text: str) -> list[str]:
    """What `breakwater validate` reports for a manifest text (empty: accepted)."""
    return [str(problem) for verdict in validate_text(text) for problem in verdict.problems]


def get(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        cluster.kubectl("get", "cbp", name, "-n", namespace, "-o", "json").stdout
    )
    return result


def test_the_generated_crd_is_established_with_its_names(cluster: Cluster, crd: str) -> None:
    stored = json.loads(cluster.kubectl("get", "crd", crd, "-o", "json").stdout)
    assert stored["status"]["acceptedNames"]["shortNames"] == ["cbp"]
    assert stored["status"]["acceptedNames"]["categories"] == ["breakwater"]
    conditions = {c["type"]: c["status"] for c in stored["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert conditions.get("NonStructuralSchema", "False") != "True"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_accepted_and_defaulted_as_the_models_default_it(
    cluster: Cluster, crd: str, namespace: str, path: Any
) -> None:
    result = apply(cluster, namespace, path.read_text())
    assert result.returncode == 0, result.stderr

    (document,) = load_documents(path.read_text())
    stored = get(cluster, namespace, document["metadata"]["name"])
    # What the API server filled in is exactly what the models assume.
    assert stored["spec"] == parse_spec(document["spec"]).to_dict()
    assert parse_policy(stored).spec == parse_spec(document["spec"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_an_invalid_manifest_is_refused_by_the_api_server_and_by_validate(
    cluster: Cluster, table_namespace: str, case: InvalidCase
) -> None:
    result = apply(cluster, table_namespace, case.yaml())
    if result.returncode == 0:
        cluster.kubectl("delete", "cbp", "--all", "-n", table_namespace, check=False)
    assert result.returncode != 0, f"the API server accepted {case.id}:\n{case.yaml()}"
    assert case.field in result.stderr, result.stderr
    if case.rule is not None:
        assert RULES[case.rule].message in result.stderr, result.stderr

    problems = validate(case.yaml())
    assert problems, "breakwater validate accepted what the API server refused"
    assert any(case.field in p for p in problems), problems
    if case.id not in WORDED_OTHERWISE:  # the same words: what validate says after the path, kubectl says
        said = [p.split(": ", 1)[1] for p in problems if case.field in p]
        assert any(words in result.stderr for words in said), f"validate: {said}\nAPI server: {result.stderr}"


# Cases where the API server's words are not a field error validate could repeat.
WORDED_OTHERWISE = {
    "upstreams-is-a-mapping": "a mapping where a list belongs fails decoding: 'unknown field' for its keys",
    "until-on-february-31": "the API server reports the CEL type conversion error of timestamp()",
}


@pytest.mark.parametrize(
    ("kind", "api_version"),
    [("CircuitbreakerPolicy", "breakwater.dev/v1alpha1"), ("CircuitBreakerPolicy", "breakwater.dev/v1")],
)
def test_a_typo_in_kind_or_api_version_is_refused_by_both(
    cluster: Cluster, table_namespace: str, kind: str, api_version: str
) -> None:
    text = yaml.safe_dump({**base_manifest(), "kind": kind, "apiVersion": api_version}, sort_keys=False)
    assert apply(cluster, table_namespace, text).returncode != 0
    problems = validate(text)
    assert problems
    assert "did you mean" in " ".join(problems)


_MUTATIONS = st.fixed_dictionaries(
    {},
    optional={
        "port": st.integers(-1, 70_000),
        "listenPort": st.sampled_from([0, 80, 1023, 1024, 15020, 15200, 15201, 16020, 65535, 65536]),
        "sidecar": st.fixed_dictionaries(
            {},
            optional={
                "adminPort": st.sampled_from([80, 15200, 15201, 16020]),
                "proxyPort": st.sampled_from([15200, 15201, 16020, 70000]),
            },
        ),
        "consecutiveFailures": st.integers(-1, 10_001),
        "permittedCalls": st.integers(0, 4),
        "successesToClose": st.integers(0, 4),
        "timeout": st.sampled_from(
            ["1s", "0s", "30", "1.5s", "1.2345s", "720h", "721h", "1d", "5 m", "250ms"]
        )
        | st.text(alphabet="0123456789.hmsdu-", max_size=8),
        "labelKey": st.text(alphabet="abAB09-_./ ", max_size=12),
        "until": st.sampled_from(
            ["2030-01-01T12:00:00Z", "2032-02-29T00:00:00Z", "2030-02-29T00:00:00Z", "2030-01-01T24:00:00Z"]
        )
        | st.text(alphabet="0123456789-T:Z.+ ", min_size=15, max_size=26),
        "slowerThan": st.sampled_from(["100ms", "2s", "10s", "1h"]),
        "jitter": st.sampled_from([0, 0.5, 0.999, 1, -0.1]),
        "mode": st.sampled_from(["Enforce", "Observe", "ForceOpen", "Disabled", "enforce"]),
    },
)


def _mutate(spec: dict[str, Any], mutations: dict[str, Any]) -> dict[str, Any]:
    spec = json.loads(json.dumps(spec))
    first = spec["upstreams"][0]
    for key in ("port", "listenPort"):
        if key in mutations:
            first[key] = mutations[key]
    if "consecutiveFailures" in mutations:
        spec.setdefault("trip", {})["consecutiveFailures"] = mutations["consecutiveFailures"]
    for key in ("permittedCalls", "successesToClose"):
        if key in mutations:
            spec.setdefault("halfOpen", {})[key] = mutations[key]
    if "slowerThan" in mutations:
        spec.setdefault("trip", {})["slowCalls"] = {"slowerThan": mutations["slowerThan"]}
    if "jitter" in mutations:
        spec.setdefault("open", {})["jitter"] = mutations["jitter"]
    for key in ("timeout", "mode"):
        if key in mutations:
            spec[key] = mutations[key]
    if "labelKey" in mutations:
        spec["selector"] = {"matchLabels": {mutations["labelKey"]: "x"}}
    if "sidecar" in mutations:
        spec["sidecar"] = mutations["sidecar"]
    if "until" in mutations:
        spec["override"] = {"mode": "Observe", "until": mutations["until"], "reason": "generated"}
    return spec


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=specs(), mutations=_MUTATIONS)
def test_validate_and_the_api_server_agree_on_generated_policies(
    cluster: Cluster, table_namespace: str, spec: dict[str, Any], mutations: dict[str, Any]
) -> None:
    manifest = {**base_manifest(), "metadata": {"name": "generated"}, "spec": _mutate(spec, mutations)}
    text = yaml.safe_dump(manifest, sort_keys=False)
    result = apply(cluster, table_namespace, text, "--dry-run=server")
    problems = validate(text)
    assert (result.returncode == 0) == (not problems), (
        f"API server: {result.stderr or 'accepted'}\nvalidate: {problems or 'accepted'}\n{text}"
    )


def _status() -> CircuitBreakerPolicyStatus:
    moment = datetime(2030, 1, 1, 12, tzinfo=UTC)
    return CircuitBreakerPolicyStatus(
        observed_generation=1,
        conditions=[
            Condition(type="Accepted", status="True", reason="Rendered", last_transition_time=moment),
            Condition(type="Ready", status="True", reason="AllReporting", last_transition_time=moment),
        ],
        pods=PodCounts(selected=12, injected=12, reporting=12),
        upstreams=[
            UpstreamStatus(name="payments", state="Open", open=3, closed=9, failure_rate=0.41, trips=7)
        ],
        summary=StatusSummary(
            state="Open", open="3/12", pods="12/12", mode="Enforce", message="payments open on 3/12 pods"
        ),
        futureField={"kept": True},  # type: ignore[call-arg]
    )


def test_status_written_by_the_models_is_accepted_kept_and_read_back(
    cluster: Cluster, crd: str, namespace: str
) -> None:
    assert apply(cluster, namespace, MINIMAL).returncode == 0
    status = _status()
    cluster.kubectl(
        "patch", "cbp", "payments", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status.to_dict()}),
    )  # fmt: skip
    stored = get(cluster, namespace, "payments")
    assert stored["status"]["futureField"] == {"kept": True}
    policy = parse_policy(stored)
    assert policy.status == status

    # Through the main resource, status is not writable (the status subresource is on).
    cluster.kubectl(
        "patch", "cbp", "payments", "-n", namespace, "--type=merge",
        "-p", json.dumps({"status": {"summary": {"state": "Closed"}}}),
    )  # fmt: skip
    assert get(cluster, namespace, "payments")["status"]["summary"]["state"] == "Open"


def test_kubectl_get_shows_the_fleet_state_in_its_columns(cluster: Cluster, crd: str, namespace: str) -> None:
    assert apply(cluster, namespace, MINIMAL).returncode == 0
    cluster.kubectl(
        "patch", "cbp", "payments", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": _status().to_dict()}),
    )  # fmt: skip

    header, row = cluster.kubectl("get", "cbp", "-n", namespace).stdout.splitlines()
    assert header.split() == ["NAME", "STATE", "OPEN", "PODS", "READY", "MODE", "AGE"]
    # READY, from the Ready condition, without -o wide
    assert row.split()[:6] == ["payments", "Open", "3/12", "12/12", "True", "Enforce"]

    wide_header, wide_row = cluster.kubectl("get", "cbp", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide_header.split() == [
        "NAME", "STATE", "OPEN", "PODS", "READY", "MODE", "AGE", "OVERRIDE", "UNTIL", "TUNING", "MESSAGE",
    ]  # fmt: skip
    assert "payments open on 3/12 pods" in wide_row

    by_category = cluster.kubectl("get", "breakwater", "-n", namespace, "-o", "name").stdout.split()
    assert by_category == ["circuitbreakerpolicy.breakwater.dev/payments"]


def test_policies_can_be_selected_by_mode(cluster: Cluster, crd: str, namespace: str) -> None:
    assert apply(cluster, namespace, MINIMAL).returncode == 0
    assert apply(cluster, namespace, (REPO / "examples" / "observe-mode.yaml").read_text()).returncode == 0
    names = cluster.kubectl(
        "get", "cbp", "-n", namespace, "--field-selector", "spec.mode=Observe", "-o", "name"
    ).stdout.split()
    assert names == ["circuitbreakerpolicy.breakwater.dev/search-dry-run"]


def test_kubectl_explain_shows_the_field_docs(cluster: Cluster, crd: str) -> None:
    def explain() -> str:
        result = cluster.kubectl("explain", "cbp.spec.trip.failureRate", check=False)
        return result.stdout if result.returncode == 0 and "minimumCalls" in result.stdout else ""

    text = cluster.wait_for("the CRD's OpenAPI to be published", explain, timeout=60)
    assert "Trip on the failure rate over a sliding window" in text
    assert "Calls the window must hold before the rate is judged" in text
    assert "window\t<Object>" in text or "window <Object>" in " ".join(text.split("\t"))

    window = cluster.kubectl("explain", "cbp.spec.trip.failureRate.window").stdout
    assert "Count (the last `size` calls) or Time" in window


def _description(explained: str) -> str:
    """The DESCRIPTION block of `kubectl explain`, as one line of prose."""
    block = explained.split("DESCRIPTION:", 1)[1].split("FIELDS:", 1)[0]
    return " ".join(block.split())


def test_kubectl_explain_says_each_thing_once(cluster: Cluster, crd: str) -> None:
    """A field's own words and then what its type adds, not the type's summary again."""
    cluster.wait_for(
        "the CRD's OpenAPI to be published",
        lambda: cluster.kubectl("explain", "cbp.spec.trip", check=False).returncode == 0,
        timeout=60,
    )
    trip = _description(cluster.kubectl("explain", "cbp.spec.trip").stdout)
    assert trip == "When the breaker opens. Any rule that fires trips it."
    opened = _description(cluster.kubectl("explain", "cbp.spec.open").stdout)
    assert opened.startswith("How long the breaker stays open. Each consecutive trip")
    assert "How long a tripped breaker stays open" not in opened
    mode = _description(cluster.kubectl("explain", "cbp.spec.mode").stdout)
    assert mode.count("Observe") == 1, mode
    state = _description(cluster.kubectl("explain", "cbp.status.upstreams.state").stdout)
    assert state.count("Mixed") == 1, state

    status = cluster.kubectl("explain", "cbp.status.upstreams.wouldOpen").stdout
    assert "In Observe mode: pods whose breaker would be open." in status
