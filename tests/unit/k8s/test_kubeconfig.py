"""The operator's own configuration loading (k8s/kubeconfig.py), each against a real loopback API server:
real kubeconfig files, real certificates, real token files that change under a running client."""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from breakwater.controller import settings
from breakwater.k8s import kubeconfig
from breakwater.k8s.client import ApiClient, api_client, request
from breakwater.k8s.kubeconfig import KubeconfigError
from tests.unit.k8s.apiserver import ApiServer, api_server

PODS = "/api/v1/namespaces/a/pods"


def write_kubeconfig(
    directory: Path, cluster: dict[str, Any], user: dict[str, Any], name: str = "kc"
) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "test",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
    }
    path = directory / name
    path.write_text(yaml.safe_dump(doc))
    return path


def get(api: ApiClient, server: ApiServer) -> dict[str, str]:
    """One GET; the headers the server saw."""
    server.answers[("GET", PODS)] = (200, {"items": []})
    assert request(api, "GET", PODS) == {"items": []}
    return server.seen[-1].headers


def test_a_token_and_ca_data(tmp_path: Path) -> None:
    with api_server() as server:
        path = write_kubeconfig(
            tmp_path, {"server": server.url, "certificate-authority-data": server.ca_data}, {"token": "t0k"}
        )
        headers = get(api_client(str(path)), server)
    assert headers["Authorization"] == "Bearer t0k"
    assert headers["Accept"] == "application/json"


def test_a_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("first\n")
    with api_server() as server:
        cluster = {"server": server.url, "certificate-authority-data": server.ca_data}
        api = api_client(str(write_kubeconfig(tmp_path, cluster, {"tokenFile": "token"})))  # relative path
        assert get(api, server)["Authorization"] == "Bearer first"
        (tmp_path / "token").write_text("second-and-longer\n")
        assert get(api, server)["Authorization"] == "Bearer second-and-longer"


def test_a_client_certificate_and_key_as_data(tmp_path: Path) -> None:
    with api_server() as server:
        pair = server.client_pair("as-data")
        user = {
            "client-certificate-data": base64.b64encode(pair.cert_pem).decode(),
            "client-key-data": base64.b64encode(pair.key_pem).decode(),
        }
        cluster = {"server": server.url, "certificate-authority-data": server.ca_data}
        headers = get(api_client(str(write_kubeconfig(tmp_path, cluster, user))), server)
    assert "Authorization" not in headers
    assert server.seen[-1].client_cn == "as-data"


def test_a_client_certificate_and_key_and_the_ca_as_files(tmp_path: Path) -> None:
    with api_server() as server:
        (tmp_path / "pki").mkdir()
        server.client_pair("as-files").write(tmp_path / "pki", "client")
        server.write_ca(tmp_path / "pki")
        cluster = {"server": server.url, "certificate-authority": "pki/ca.crt"}
        user = {"client-certificate": str(tmp_path / "pki/client.crt"), "client-key": "pki/client.key"}
        get(api_client(str(write_kubeconfig(tmp_path, cluster, user))), server)
    assert server.seen[-1].client_cn == "as-files"


def test_insecure_skip_tls_verify_trusts_any_server_and_without_it_an_unknown_ca_fails(
    tmp_path: Path,
) -> None:
    with api_server() as server:
        insecure = write_kubeconfig(
            tmp_path, {"server": server.url, "insecure-skip-tls-verify": True}, {"token": "x"}
        )
        assert get(api_client(str(insecure)), server)["Authorization"] == "Bearer x"
        strict = write_kubeconfig(tmp_path, {"server": server.url}, {"token": "x"}, name="strict")
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            request(api_client(str(strict)), "GET", PODS)


def test_kubeconfig_env_files_merge_the_first_current_context_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with api_server(tls=False) as server:
        first = write_kubeconfig(tmp_path, {"server": server.url}, {"token": "one"}, name="first")
        second = write_kubeconfig(tmp_path, {"server": "http://127.0.0.1:9"}, {"token": "two"}, name="second")
        monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(tmp_path / "absent"), str(first), str(second)]))
        config = kubeconfig.from_kubeconfig(None)
        assert (config.host, config.token) == (server.url, "one")
        assert get(ApiClient(config), server)["Authorization"] == "Bearer one"


def test_in_cluster_reads_the_service_account_and_a_rotated_token(tmp_path: Path) -> None:
    """The kubelet rotates a projected token by swapping the `..data` symlink: a new file, a new inode."""
    with api_server() as server:
        account = tmp_path / "serviceaccount"
        account.mkdir()
        for generation, token in (("gen1", "token-one"), ("gen2", "token-two")):
            (account / generation).mkdir()
            (account / generation / "token").write_text(token)
            server.write_ca(account / generation)
            (account / generation / "namespace").write_text("breakwater-system")
        (account / "..data").symlink_to("gen1")
        for name in ("token", "ca.crt", "namespace"):
            (account / name).symlink_to(f"..data/{name}")
        port = server.url.rsplit(":", 1)[1]
        config = kubeconfig.in_cluster(
            account, {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
        )
        assert config.namespace == "breakwater-system"
        api = ApiClient(config)
        assert get(api, server)["Authorization"] == "Bearer token-one"
        (account / "..data_tmp").symlink_to("gen2")
        (account / "..data_tmp").rename(account / "..data")
        assert get(api, server)["Authorization"] == "Bearer token-two"


def test_not_in_a_cluster_without_the_service_host(tmp_path: Path) -> None:
    with pytest.raises(kubeconfig.NotInCluster, match="KUBERNETES_SERVICE_HOST"):
        kubeconfig.in_cluster(tmp_path, {})


EXEC_PLUGIN = textwrap.dedent(
    """
    import datetime, json, os, pathlib, sys
    runs = pathlib.Path(sys.argv[1])
    n = int(runs.read_text()) + 1 if runs.exists() else 1
    runs.write_text(str(n))
    info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
    assert info["spec"]["interactive"] is False and os.environ["FROM_KUBECONFIG"] == "yes"
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=float(sys.argv[2]))
    status = {"token": f"exec-{n}", "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
    if len(sys.argv) > 3:
        status["clientCertificateData"] = "PEM"
    credential = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential"}
    print(json.dumps({**credential, "status": status}))
    """
)


def exec_user(tmp_path: Path, *args: str) -> dict[str, Any]:
    (tmp_path / "plugin.py").write_text(EXEC_PLUGIN)
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(tmp_path / "plugin.py"), str(tmp_path / "runs"), *args],
            "env": [{"name": "FROM_KUBECONFIG", "value": "yes"}],
            "interactiveMode": "Never",
        }
    }


def test_an_exec_plugin_token_is_used_until_it_expires(tmp_path: Path) -> None:
    with api_server() as server:
        cluster = {"server": server.url, "certificate-authority-data": server.ca_data}
        lasting = api_client(str(write_kubeconfig(tmp_path, cluster, exec_user(tmp_path, "3600"))))
        assert get(lasting, server)["Authorization"] == "Bearer exec-1"  # run once, at load
        assert get(lasting, server)["Authorization"] == "Bearer exec-1"
        plugin = lasting.configuration.exec_plugin
        assert plugin is not None
        assert plugin.expires is not None
        assert plugin.expires > datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=50)
        expiring = api_client(str(write_kubeconfig(tmp_path, cluster, exec_user(tmp_path, "1"), name="e")))
        assert get(expiring, server)["Authorization"] == "Bearer exec-3"  # within the margin: run again
    assert (tmp_path / "runs").read_text() == "3"


def _operator_refuses(path: Path) -> str:
    """`breakwater operator --kubeconfig=path` exits 1 with a one-line reason, no traceback: its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "breakwater.cli", "operator", f"--kubeconfig={path}", "--webhook-manage=none"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("breakwater operator: kubeconfig ")
    return done.stderr


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ({"auth-provider": {"name": "gcp"}}, "user auth-provider 'gcp' is not supported by breakwater"),
        ({"exec": {"command": "/nonexistent/plugin"}}, "exec plugin '/nonexistent/plugin' could not run"),
        (
            "exec-cert",
            "returned a client certificate: breakwater supports exec plugins that return a token only",
        ),
    ],
)
def test_what_is_not_supported_fails_in_one_line_at_the_command_line(
    tmp_path: Path, user: Any, message: str
) -> None:
    user = exec_user(tmp_path, "60", "with-cert") if user == "exec-cert" else user
    path = write_kubeconfig(
        tmp_path, {"server": "https://127.0.0.1:9", "insecure-skip-tls-verify": True}, user
    )
    with pytest.raises(KubeconfigError, match=message.replace("(", r"\(")):
        api_client(str(path))
    assert message in _operator_refuses(path)


def test_a_kubeconfig_without_the_named_parts_says_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "kc"
    path.write_text(json.dumps({"current-context": "nowhere", "contexts": []}))
    with pytest.raises(KubeconfigError, match="no context named 'nowhere'"):
        api_client(str(path))
    with pytest.raises(KubeconfigError, match="not found"):
        api_client(str(tmp_path / "absent"))


def test_neither_in_a_cluster_nor_a_kubeconfig_says_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(
        kubeconfig.KubeconfigNotFound, match=r"KUBERNETES_SERVICE_HOST .* unset, and kubeconfig .* not found"
    ):
        kubeconfig.load(None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["contexts"][0].update(context="test"), "context 'test' is not a mapping"),
        (lambda d: d["users"][0].update(user="u"), "user 'u' is not a mapping"),
        (lambda d: d["users"][0]["user"].update(exec="kubelogin"), "user exec is not a mapping"),
        (
            lambda d: d["clusters"][0]["cluster"].update(server="https://127.0.0.1:99999"),
            "cluster server 'https://127.0.0.1:99999' is not an http(s) URL",
        ),
        (
            lambda d: d["clusters"][0]["cluster"].update(
                {"certificate-authority-data": base64.b64encode(b"not a certificate").decode()}
            ),
            "the CA or the client certificate does not load",
        ),
    ],
    ids=["context-not-a-mapping", "user-not-a-mapping", "exec-not-a-mapping", "bad-port", "ca-not-pem"],
)
def test_a_kubeconfig_of_the_wrong_shape_fails_at_load_in_one_line(
    tmp_path: Path, change: Any, message: str
) -> None:
    """Not a traceback, and not an operator that retries for ever what can never work."""
    path = write_kubeconfig(tmp_path, {"server": "https://127.0.0.1:9"}, {"token": "t"})
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(KubeconfigError, match=re.escape(message)):
        api_client(str(path))


def test_a_kubeconfig_that_is_not_utf8_fails_in_one_line_at_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "kc"
    path.write_bytes(b"\xff\xfe binary")
    with pytest.raises(KubeconfigError, match=r"kubeconfig .*kc: 'utf-8' codec can't decode"):
        api_client(str(path))
    _operator_refuses(path)


def test_the_operator_without_kubeconfig_flag_merges_the_kubeconfig_env_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$KUBECONFIG is not the flag's default: it would be read as one path, and win over the
    in-cluster account. Without the flag, the operator's settings leave the choice to `load`."""
    with api_server(tls=False) as server:
        first = write_kubeconfig(tmp_path, {"server": server.url}, {"token": "one"}, name="first")
        second = write_kubeconfig(tmp_path, {"server": "http://127.0.0.1:9"}, {"token": "two"}, name="second")
        monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(first), str(second)]))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        parser = argparse.ArgumentParser()
        settings.add_arguments(parser)
        operator_settings = settings.from_args(parser.parse_args(["--webhook-manage=none"]))
        assert operator_settings.kubeconfig is None
        assert get(api_client(operator_settings.kubeconfig), server)["Authorization"] == "Bearer one"
