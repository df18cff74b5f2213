"""The breaker on real pods: a client Deployment calls its upstream by Service name through the
injected native sidecar, the upstream fails and recovers, `kubectl get cbp` follows; a Job's first
request succeeds and the Job completes; a policy edit reaches the running sidecars; a tuned threshold
reaches them, and an override ends on them with no operator running; a suggestion is promoted into the
spec, and a quorum of tripped pods opens the upstream on every pod and not before."""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlencode

from breakwater.api.scalars import Duration
from tests.conftest import Cluster
from tests.node import manifests as m
from tests.node.conftest import Release

SIDECAR = "breakwater-proxy"


def start_upstream_and_policy(cluster: Cluster, namespace: str, image: str, **spec: Any) -> None:
    cluster.apply(m.upstream(namespace, image))
    cluster.apply(m.policy(namespace, **spec))
    cluster.wait_for(
        "policy Accepted",
        lambda: m.condition(m.cbp(cluster, namespace), "Accepted").get("status") == "True",
        timeout=60,
    )
    m.ready_pods(cluster, namespace, "app=payments-backend", 1)


def wait_state(cluster: Cluster, namespace: str, state: str, *, timeout: float) -> float:
    """Seconds until the policy's upstream shows `state`."""
    started = time.monotonic()
    cluster.wait_for(
        f"payments {state} on the resource",
        lambda: m.upstream_state(m.cbp(cluster, namespace)) == state,
        timeout=timeout,
        interval=0.2,
    )
    return time.monotonic() - started


def test_a_failing_upstream_opens_the_breaker_on_the_resource_the_client_gets_the_fallback_and_it_recovers(
    node_cluster: Cluster, release: Release, workload_namespace: str, image: str
) -> None:
    cluster, ns = node_cluster, workload_namespace
    start_upstream_and_policy(cluster, ns, image)
    cluster.apply(m.client(ns, image, replicas=2))
    clients = m.ready_pods(cluster, ns, "app=checkout", 2)
    for pod in clients:
        (sidecar,) = [c for c in pod["spec"]["initContainers"] if c["name"] == SIDECAR]
        assert sidecar["restartPolicy"] == "Always"
        status = next(s for s in pod["status"]["initContainerStatuses"] if s["name"] == SIDECAR)
        assert status["started"], status
        assert "running" in status["state"], status
    names = [p["metadata"]["name"] for p in clients]

    # Every call goes app -> sidecar (127.0.0.1:15210) -> payments.<ns>.svc.cluster.local (CoreDNS,
    # kube-proxy) -> the backend pod, and both sidecars report the current config.
    cluster.wait_for(
        "Closed, Ready, 2 pods reporting",
        lambda: (
            m.upstream_state(body := m.cbp(cluster, ns)) == "Closed"
            and m.condition(body, "Ready").get("status") == "True"
            and (body["status"].get("pods") or {}).get("reporting") == 2
        ),
        timeout=90,
    )
    for counts in m.answers_over(cluster, ns, names):
        assert set(counts) == {"200"}, counts

    m.set_upstream(cluster, ns, "fail")
    wait_state(cluster, ns, "Open", timeout=30)
    table = cluster.kubectl("get", "cbp", "-n", ns).stdout
    assert "Open" in table.splitlines()[1], table
    for counts in m.answers_over(cluster, ns, names):
        assert counts.get("503 fallback-static", 0) > 0, counts

    m.set_upstream(cluster, ns, "ok")
    wait_state(cluster, ns, "Closed", timeout=60)
    for counts in m.answers_over(cluster, ns, names):
        assert set(counts) == {"200"}, counts


def test_reports_are_authenticated_by_the_token_the_kubelet_projected_into_the_sidecar(
    node_cluster: Cluster, release: Release, workload_namespace: str, image: str
) -> None:
    cluster, ns = node_cluster, workload_namespace
    start_upstream_and_policy(cluster, ns, image)
    cluster.apply(m.client(ns, image, replicas=1))
    (pod,) = m.ready_pods(cluster, ns, "app=checkout", 1)
    name = pod["metadata"]["name"]
    # The token file the kubelet wrote into the running sidecar: bound to this pod, for the
    # operator's audience. Nothing in this test created a token.
    token = cluster.kubectl(
        "exec", "-n", ns, name, "-c", SIDECAR, "--", "python", "-c",
        "print(open('/var/run/secrets/breakwater/token').read())",
    ).stdout.strip()  # fmt: skip
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["aud"] == ["breakwater"]
    assert claims["kubernetes.io"]["pod"] == {"name": name, "uid": pod["metadata"]["uid"]}
    assert claims["sub"] == f"system:serviceaccount:{ns}:default"
    cluster.wait_for(
        "the sidecar reporting",
        lambda: (m.cbp(cluster, ns)["status"].get("pods") or {}).get("reporting") == 1,
        timeout=60,
    )
    log = cluster.kubectl("logs", "-n", ns, name, "-c", SIDECAR).stdout
    assert "session" in log.lower(), log[-2000:]


def test_a_job_with_the_sidecar_completes_and_its_first_request_succeeds(
    node_cluster: Cluster, release: Release, workload_namespace: str, image: str
) -> None:
    cluster, ns = node_cluster, workload_namespace
    start_upstream_and_policy(cluster, ns, image)
    cluster.apply(m.job(ns, image))

    def finished() -> str:
        body = json.loads(cluster.kubectl("get", "job", "settle", "-n", ns, "-o", "json").stdout)
        for cond in body.get("status", {}).get("conditions") or ():
            if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
                return str(cond["type"])
        return ""

    assert cluster.wait_for("the Job to finish", finished, timeout=120, interval=0.5) == "Complete"
    (pod,) = m.pods(cluster, ns, "job=settle")
    assert pod["status"]["phase"] == "Succeeded"
    assert any(c["name"] == SIDECAR for c in pod["spec"]["initContainers"])
    log = cluster.kubectl("logs", "-n", ns, pod["metadata"]["name"], "-c", "app").stdout
    assert json.loads(log.strip().splitlines()[-1]) == {"first_request": "200"}


def test_a_policy_edit_reaches_the_running_sidecars_live_and_through_the_mounted_configmap(
    node_cluster: Cluster, release: Release, workload_namespace: str, image: str
) -> None:
    cluster, ns = node_cluster, workload_namespace
    start_upstream_and_policy(cluster, ns, image)
    cluster.apply(m.client(ns, image, replicas=2))
    clients = m.ready_pods(cluster, ns, "app=checkout", 2)
    cluster.wait_for(
        "2 pods reporting",
        lambda: (m.cbp(cluster, ns)["status"].get("pods") or {}).get("reporting") == 2,
        timeout=90,
    )

    m.patch_spec(cluster, ns, {"trip": {"consecutiveFailures": 7}})
    generation = m.cbp(cluster, ns)["metadata"]["generation"]
    # `reporting` counts sidecars that report the config hash the operator computes for the new
    # generation: the edit is applied in every running sidecar.
    cluster.wait_for(
        "both sidecars running the edited policy",
        lambda: (
            (body := m.cbp(cluster, ns))["status"].get("observedGeneration") == generation
            and (body["status"].get("pods") or {}).get("reporting") == 2
            and m.condition(body, "Ready").get("status") == "True"
        ),
        timeout=30,
    )
    # The fallback path: the kubelet refreshes the ConfigMap the sidecar mounts, so a sidecar that
    # missed the live delivery (or restarts while the operator is down) still gets the edit.
    configmap = json.loads(
        cluster.kubectl("get", "configmap", "breakwater-sidecar-config", "-n", ns, "-o", "json").stdout
    )
    expected = configmap["data"]["payments.json"]
    for pod in clients:
        name = pod["metadata"]["name"]
        read = ["exec", "-n", ns, name, "-c", SIDECAR, "--", "python", "-c"]
        script = "print(open('/etc/breakwater/policies/payments.json').read(), end='')"
        cluster.wait_for(
            f"the ConfigMap mounted in {name} carrying the edit",
            lambda read=read, script=script: cluster.kubectl(*read, script, check=False).stdout == expected,
            timeout=120,
            interval=2,
        )


def sidecar_admin(cluster: Cluster, namespace: str, pod: str, path: str) -> dict[str, Any]:
    """GET the sidecar's admin endpoint from inside its container (it listens on the pod's loopback)."""
    script = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:15200{path}').read().decode())"
    out = cluster.kubectl("exec", "-n", namespace, pod, "-c", SIDECAR, "--", "python", "-c", script)
    answer: dict[str, Any] = json.loads(out.stdout)
    return answer


def test_a_tuned_threshold_reaches_the_pods_and_an_override_ends_on_them_with_the_operator_scaled_to_zero(
    node_cluster: Cluster, release: Release, workload_namespace: str, image: str
) -> None:
    """Issue 15 on real pods: the tuner moves the slow-call duration from what the pods' calls took and
    the sidecars run it; a ForceOpen override with `until` ends on every pod by the sidecars' own clock
    while no operator replica runs."""
    cluster, ns = node_cluster, workload_namespace
    adaptive = {
        "enabled": True,
        "historyWindow": "2m",
        "hysteresis": "5s",
        "minimumVolume": 50,
        "pinned": ["ConsecutiveFailures", "OpenDuration"],
    }
    trip = {"consecutiveFailures": 3, "slowCalls": {"slowerThan": "1500ms", "percent": 80}}
    start_upstream_and_policy(cluster, ns, image, adaptive=adaptive, trip=trip)
    m.set_upstream(cluster, ns, "slow?seconds=0.2")  # every call takes 0.2 s: p99 x 2 is well below 1.5 s
    cluster.apply(m.client(ns, image, replicas=2))
    names = [p["metadata"]["name"] for p in m.ready_pods(cluster, ns, "app=checkout", 2)]

    def effective() -> dict[str, Any]:
        ups = (m.cbp(cluster, ns).get("status") or {}).get("upstreams") or [{}]
        return dict(ups[0].get("effective") or {})

    cluster.wait_for(
        "slowerThan tuned",
        lambda: (effective().get("source") or {}).get("slowerThan") == "Adaptive",
        timeout=120,
    )
    assert "latency p99" in effective()["reason"], effective()

    def running_slow_seconds(pod: str) -> float:
        config = sidecar_admin(cluster, ns, pod, "/config")
        return float(config["upstreams"][0]["breaker"]["slowCallSeconds"])

    cluster.wait_for(
        "both sidecars running a tuned slow-call duration below the configured 1.5 s",
        lambda: all(running_slow_seconds(n) < 1.5 for n in names),
        timeout=60,
        interval=1,
    )
    m.set_upstream(cluster, ns, "ok")

    until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=25)
    override = {"mode": "ForceOpen", "until": until.strftime("%Y-%m-%dT%H:%M:%SZ"), "reason": "drill"}
    m.patch_spec(cluster, ns, {"override": override})

    def modes() -> set[str]:
        return {sidecar_admin(cluster, ns, n, "/stats")["upstreams"]["payments"]["mode"] for n in names}

    cluster.wait_for("both sidecars forced open", lambda: modes() == {"ForceOpen"}, timeout=30, interval=1)
    for name in names:
        m.client_stats(cluster, ns, name, reset=True)
    operator = release.names
    cluster.kubectl("scale", "deployment", operator.deployment, "-n", operator.namespace, "--replicas=0")
    try:
        cluster.wait_for(
            "no operator pod left",
            lambda: not m.pods(cluster, operator.namespace, operator.selector),
            timeout=90,
            interval=1,
        )
        assert time.time() < until.timestamp(), "the operator took too long to stop: nothing left to test"
        for name in names:  # forced open: the app got the fallback, the upstream was not called
            counts = m.client_stats(cluster, ns, name)["counts"]
            assert set(counts) == {"503 fallback-static"}, counts
        time.sleep(max(0.0, until.timestamp() - time.time()) + 3)  # the sidecars check twice a second
        assert modes() == {"Enforce"}
        for counts in m.answers_over(cluster, ns, names):
            assert set(counts) == {"200"}, counts
    finally:
        cluster.kubectl(
            "scale",
            "deployment",
            operator.deployment,
            "-n",
            operator.namespace,
            f"--replicas={release.replicas}",
        )
        m.ready_pods(cluster, operator.namespace, operator.selector, release.replicas, timeout=180)


def breaker_on(cluster: Cluster, namespace: str, pod: str) -> tuple[str, str]:
    """(mode, state) of the payments breaker in the pod's running sidecar."""
    upstream = sidecar_admin(cluster, namespace, pod, "/stats")["upstreams"]["payments"]
    return str(upstream["mode"]), str(upstream["state"])


def test_suggestions_are_promoted_and_a_quorum_of_tripped_pods_opens_every_pod_and_not_before(
    node_cluster: Cluster, release: Release, workload_namespace: str, image: str
) -> None:
    """Issue 15's suggestions and fleet quorum on real pods: three client pods call one backend, each on
    a path of its own. In Observe mode the operator suggests a slow-call duration from what their calls
    took, and `breakwater promote` prints the patch that writes it into the spec. Then, enforced with
    quorumPercent 50: the backend failing one pod's path trips that pod alone (1/3, below the quorum) and
    the others go on calling it; failing a second pod's path (2/3) opens the upstream on the third, whose
    calls then get the fallback without reaching the backend; when the backend recovers, the tripped
    pods' trials close their breakers and the third is released."""
    cluster, ns = node_cluster, workload_namespace
    spec = {
        "mode": "Observe",
        "adaptive": {"enabled": True, "historyWindow": "2m", "hysteresis": "5s", "minimumVolume": 50},
        "trip": {"consecutiveFailures": 3, "slowCalls": {"slowerThan": "1500ms", "percent": 80}},
        "open": {"duration": "3s", "maxDuration": "1m", "jitter": 0, "backoffMultiplier": 1},  # trial each 3s
        "coordination": {"quorumPercent": 50},
    }
    start_upstream_and_policy(cluster, ns, image, **spec)
    m.set_upstream(cluster, ns, "slow?seconds=0.2")  # p99 x 2 is well below the configured 1.5 s
    first, second, quiet = pods = ["first", "second", "quiet"]
    for name in pods:
        cluster.apply(m.client_pod(ns, image, name, path=f"/pay/{name}"))
    m.ready_pods(cluster, ns, "app=checkout", 3)

    def upstream() -> dict[str, Any]:
        return dict(((m.cbp(cluster, ns).get("status") or {}).get("upstreams") or [{}])[0])

    def suggested_seconds() -> float:
        slower = (upstream().get("suggested") or {}).get("slowerThan")
        return Duration(slower).seconds if slower else 0.0

    cluster.wait_for(
        "a slow-call duration suggested below the configured 1.5 s",
        lambda: 0 < suggested_seconds() < 1.5,
        timeout=120,
        interval=1,
    )
    status = upstream()
    assert "latency p99" in status["suggested"]["reason"], status
    assert status["effective"]["source"]["slowerThan"] == "Configured", status  # Observe: not delivered

    def running_slow_seconds(pod: str) -> float:
        return float(sidecar_admin(cluster, ns, pod, "/config")["upstreams"][0]["breaker"]["slowCallSeconds"])

    assert running_slow_seconds(quiet) == 1.5
    assert "Suggesting (Observe)" in cluster.kubectl("get", "cbp", "payments", "-n", ns, "-o", "wide").stdout

    body = cluster.kubectl("get", "cbp", "payments", "-n", ns, "-o", "json").stdout
    promote = subprocess.run(
        [sys.executable, "-m", "breakwater.cli", "promote", "-"],
        input=body,
        capture_output=True,
        text=True,
        check=False,
    )
    assert promote.returncode == 0, promote.stderr
    cluster.kubectl("patch", "cbp", "payments", "-n", ns, "--type", "merge", "-p", promote.stdout)
    promoted = json.loads(body)["status"]["upstreams"][0]["suggested"]["slowerThan"]
    policy = m.cbp(cluster, ns)
    assert policy["spec"]["trip"]["slowCalls"]["slowerThan"] == promoted

    def running_generation(generation: int) -> bool:
        body = m.cbp(cluster, ns)
        return (
            body["status"].get("observedGeneration") == generation
            and m.condition(body, "Accepted").get("status") == "True"
            and (body["status"].get("pods") or {}).get("reporting") == 3
        )

    generation = policy["metadata"]["generation"]
    cluster.wait_for("every sidecar running the promoted spec", lambda: running_generation(generation))
    assert running_slow_seconds(quiet) == Duration(promoted).seconds

    # Enforced, with the thresholds the spec now says (tuning off: nothing moves them during the outage).
    m.set_upstream(cluster, ns, "ok")
    m.patch_spec(cluster, ns, {"mode": "Enforce", "adaptive": {"enabled": False}})
    generation = m.cbp(cluster, ns)["metadata"]["generation"]
    cluster.wait_for(
        "every sidecar enforcing, all Closed",
        lambda: running_generation(generation) and upstream().get("closed") == 3,
    )

    def fail(pod: str) -> None:
        m.set_upstream(cluster, ns, "fail?" + urlencode({"path": f"/pay/{pod}"}))

    def received(pod: str) -> int:
        """Requests the backend received from the pod (on its path)."""
        return int(m.set_upstream(cluster, ns, "state")["requests"].get(f"/pay/{pod}", 0))

    fail(first)
    cluster.wait_for(
        "one pod in three tripped on the resource",
        lambda: (u := upstream()).get("open", 0) + u.get("halfOpen", 0) == 1 and u.get("closed") == 2,
        timeout=30,
    )
    # The status loop evaluated the quorum on that view (the same pass wrote it); over 3 s more the other
    # two still call the backend and get its answers.
    assert "quorum" not in upstream()
    reached = received(quiet)
    for counts in m.answers_over(cluster, ns, [second, quiet], seconds=3):
        assert set(counts) == {"200"}, counts
    assert received(quiet) > reached
    assert "quorum" not in upstream()
    assert breaker_on(cluster, ns, quiet) == ("Enforce", "Closed")

    fail(second)
    cluster.wait_for(
        "the quorum on the resource",
        lambda: "2/3 pods tripped" in (upstream().get("quorum") or ""),
        timeout=30,
    )
    cluster.wait_for(
        "the quiet pod held open",
        lambda: breaker_on(cluster, ns, quiet) == ("ForceOpen", "Open"),
        timeout=30,
        interval=1,
    )
    assert [breaker_on(cluster, ns, pod)[0] for pod in (first, second)] == ["Enforce", "Enforce"]  # probing
    reached = received(quiet)
    (counts,) = m.answers_over(cluster, ns, [quiet], seconds=2)
    assert set(counts) == {"503 fallback-static"}, counts
    assert received(quiet) == reached, "a held pod's call reached the backend"
    cluster.wait_for(
        "open on every pod on the resource",
        lambda: (u := upstream()).get("open", 0) + u.get("halfOpen", 0) == 3,
        timeout=15,
    )

    m.set_upstream(cluster, ns, "ok")  # the tripped pods' next trials (3 s at most) close their breakers
    cluster.wait_for(
        "the quiet pod released",
        lambda: breaker_on(cluster, ns, quiet) == ("Enforce", "Closed"),
        timeout=60,
        interval=1,
    )
    cluster.wait_for(
        "Closed on every pod, no quorum",
        lambda: (u := upstream()).get("state") == "Closed" and u.get("closed") == 3 and "quorum" not in u,
        timeout=30,
    )
    reached = received(quiet)
    for counts in m.answers_over(cluster, ns, pods):
        assert set(counts) == {"200"}, counts
    assert received(quiet) > reached

    def reasons() -> set[str]:
        items = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
        return {str(e.get("reason")) for e in items}

    cluster.wait_for(
        "QuorumOpen and QuorumReleased Events",
        lambda: {"QuorumOpen", "QuorumReleased"} <= reasons(),
        timeout=30,
    )
