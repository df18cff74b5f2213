"""Plots for docs/benchmarks-operator.md from the recorded results (bench/results/operator-*.json).

.venv/bin/python bench/operator/plot.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
IMG = REPO / "docs" / "img"


def scale() -> None:
    data = json.loads((RESULTS / "operator-scale.json").read_text())
    steps = data["steps"]
    pods = [s["pods"] for s in steps]
    fig, (cpu_ax, mem_ax, api_ax) = plt.subplots(1, 3, figsize=(13, 3.8))
    cpu_ax.plot(pods, [s["cpu_percent"]["operator"] for s in steps], "o-", label="operator")
    cpu_ax.plot(pods, [s["cpu_percent"]["kube-apiserver"] for s in steps], "s--", label="kube-apiserver")
    cpu_ax.plot(pods, [s["cpu_percent"]["simulator"] for s in steps], "^:", label="report simulator")
    cpu_ax.axhline(100, color="grey", lw=0.8)
    cpu_ax.set(xlabel="reporting pods (policies = pods / 10)", ylabel="CPU, % of one core", title="CPU")
    cpu_ax.legend(fontsize=8)
    mem_ax.plot(pods, [s["operator_rss_mib"] for s in steps], "o-", label="operator RSS")
    mem_ax.axhline(200e6 / 2**20, color="red", lw=0.8, ls="--", label="target 200 MB (190.7 MiB)")
    mem_ax.set(xlabel="reporting pods", ylabel="MiB", title="Operator memory")
    mem_ax.legend(fontsize=8)
    api_ax.plot(pods, [s["reports_per_second"] for s in steps], "o-", label="reports answered/s")
    api_ax.plot(pods, [s["offered_reports_per_second"] for s in steps], "k:", label="reports offered/s")
    api_ax.plot(pods, [s["status_patches_per_second"] for s in steps], "s--", label="status PATCH/s")
    api_ax.plot(pods, [s["tokenreviews_per_second"] for s in steps], "^--", label="TokenReviews/s")
    api_ax.set(xlabel="reporting pods", ylabel="per second", title="Throughput and API-server load")
    api_ax.legend(fontsize=8)
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / "operator-scale.png", dpi=110)
    print(IMG / "operator-scale.png")


if __name__ == "__main__":
    scale()
