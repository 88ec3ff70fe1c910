"""Turn a benchmark run into ratios against its own baselines, a Markdown table and a chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.perf_analyzer import STAGES as PERF_ANALYZER_STAGES

OVERHEAD_STAGES = ("decode", "letterbox", "postprocess", "json_and_http")
OVERHEAD_TARGET_MS = {"segment": 15.0}


def _at(rows: list[dict[str, Any]], c: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["concurrency"] == c), None)


def _best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return max(rows, key=lambda r: r["throughput"])


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each as a number measured in this run and the goal it is compared with."""
    out: dict[str, Any] = {}
    for m in results["models"]:
        modes, r = m["modes"], {}
        gw, ort, tr, ul, pa = (
            modes.get(k) for k in ("gateway", "onnxruntime", "triton", "ultralytics-server", "perf-analyzer")
        )
        if gw and ort:
            r["gateway_vs_onnxruntime_throughput"] = {
                "value": round(_best(gw)["throughput"] / _best(ort)["throughput"], 3),
                "goal": ">= 0.90",
            }
            g1, o1 = _at(gw, 1), _at(ort, 1)
            if g1 and o1:
                r["gateway_p50_minus_onnxruntime_p50_ms_c1"] = {
                    "value": round(g1["p50_ms"] - o1["p50_ms"], 2),
                    "goal": "<= 10",
                }
        if gw and ul:
            c = (
                8
                if _at(gw, 8) and _at(ul, 8)
                else max(set(x["concurrency"] for x in gw) & set(x["concurrency"] for x in ul))
            )
            g_row, u_row = _at(gw, c), _at(ul, c)
            assert g_row and u_row  # c is a level both modes ran
            r[f"gateway_vs_ultralytics_throughput_c{c}"] = {
                "value": round(g_row["throughput"] / u_row["throughput"], 3),
                "goal": ">= 1.5",
            }
        if gw:
            first = gw[0]["stages_ms"]
            task = {"yolov8n-seg": "segment", "yolov8n-pose": "pose"}.get(m["model"], "detect")
            overhead = sum(first.get(k, 0.0) for k in OVERHEAD_STAGES)
            r["gateway_overhead_ms_per_request"] = {
                "value": round(overhead, 2),
                "goal": f"<= {OVERHEAD_TARGET_MS.get(task, 5.0):g}",
                "stages_ms": {k: first.get(k) for k in (*OVERHEAD_STAGES, "triton", "total")},
            }
        if gw and gw[0].get("cpu_ms", {}).get("gateway") is not None:
            task = {"yolov8n-seg": "segment", "yolov8n-pose": "pose"}.get(m["model"], "detect")
            r["gateway_process_cpu_ms_per_request"] = {
                "value": gw[0]["cpu_ms"]["gateway"],
                "goal": f"<= {OVERHEAD_TARGET_MS.get(task, 5.0):g}",
                "concurrency": gw[0]["concurrency"],
            }
        if gw and tr:
            pairs = [(g, _at(tr, g["concurrency"])) for g in gw]
            r["gateway_p99_over_triton_p99"] = {
                str(g["concurrency"]): round(g["p99_ms"] / t["p99_ms"], 2) for g, t in pairs if t and t["p99_ms"]
            }
        if tr and pa:
            # The two bare-Triton baselines (our async Python client, Triton's perf_analyzer) should agree.
            r["triton_client_over_perf_analyzer_throughput"] = {
                str(t["concurrency"]): round(t["throughput"] / p["throughput"], 2)
                for t in tr
                if (p := _at(pa, t["concurrency"])) and p["throughput"]
            }
        peer = modes.get("ultralytics-triton")
        if gw and peer:  # Ultralytics' own Triton client against the same Triton: the peer users actually pick
            c = (
                8
                if _at(gw, 8) and _at(peer, 8)
                else max({x["concurrency"] for x in gw} & {x["concurrency"] for x in peer})
            )
            g, u = _at(gw, c), _at(peer, c)
            assert g and u
            r[f"gateway_vs_ultralytics_triton_throughput_c{c}"] = {
                "value": round(g["throughput"] / u["throughput"], 3),
                "goal": ">= 2.0",
            }
        if "parity" in m:
            r["parity_fraction"] = {"value": m["parity"]["fraction"], "goal": "1.0"}
        if "parity_ultralytics_triton" in m:
            r["ultralytics_triton_parity_fraction"] = {
                "value": m["parity_ultralytics_triton"]["fraction"],
                "goal": "1.0",
            }
        out[m["model"]] = r
    return out


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        "# Benchmark results",
        "",
        f"`{env['command']}` — {env['cpu']}, {env['cores']} cores, Python {env['python']}; target {env['target']}; "
        f"letterbox {env['letterbox']}, size {env['size']}, input {env['input']}; {env.get('wall_seconds', '?')} s.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        "",
    ]
    for m in results["models"]:
        lines += [
            f"## {m['model']}",
            "",
            "| mode | conc. | img/s (median, min–max) | gateway cores per 1,000 img/s | p50 ms | p90 ms | p99 ms "
            "| errors | bytes sent/req |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for mode, rows in m["modes"].items():
            for r in rows:
                # a gateway burning x ms of CPU per image needs x cores to serve 1,000 images/s
                cores = r.get("cpu_ms", {}).get("gateway")
                lines.append(
                    f"| {mode} | {r['concurrency']} "
                    f"| {r['throughput']:.2f} ({r['throughput_min']:.2f}–{r['throughput_max']:.2f}) "
                    f"| {'' if cores is None else f'{cores:.1f}'} "
                    f"| {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} "
                    f"| {m['bytes_sent'].get(mode, 0):,} |"
                )
        if "open_loop" in m:
            o = m["open_loop"]
            lines += [
                "",
                f"Open loop (gateway) at {o['rate']}/s: {o['throughput']:.2f} img/s served, "
                f"p50 {o['p50_ms']} ms, p99 {o['p99_ms']} ms, errors {o['errors']}.",
            ]
        gw = m["modes"].get("gateway")
        if gw:
            lines += [
                "",
                "Gateway stages (ms per request, from Server-Timing): "
                + ", ".join(
                    f"c={r['concurrency']}: " + " ".join(f"{k} {v:.1f}" for k, v in r["stages_ms"].items())
                    for r in gw[:2]
                ),
            ]
        cpu_rows = [(mode, r) for mode, rows in m["modes"].items() for r in rows if r.get("cpu_ms")]
        if cpu_rows:
            roles = list(dict.fromkeys(role for _, r in cpu_rows for role in r["cpu_ms"]))
            lines += [
                "",
                "CPU time per request (ms, all cores, from /proc; `triton` = tritonserver and its python-backend "
                "stubs, `harness` = the load generator, and for onnxruntime the model itself):",
                "",
                "| mode | conc. | " + " | ".join(roles) + " |",
                "|---|---:|" + "---:|" * len(roles),
            ]
            for mode, r in cpu_rows:
                lines.append(
                    f"| {mode} | {r['concurrency']} | "
                    + " | ".join(f"{r['cpu_ms'][k]:.1f}" if k in r["cpu_ms"] else "" for k in roles)
                    + " |"
                )
        pa = m["modes"].get("perf-analyzer")
        if pa:
            lines += [
                "",
                "Bare Triton as perf_analyzer sees it (ms per request, its CSV columns; "
                "the server ones are Triton's own statistics):",
                "",
                "| conc. | " + " | ".join(PERF_ANALYZER_STAGES) + " | Avg latency |",
                "|---:|" + "---:|" * (len(PERF_ANALYZER_STAGES) + 1),
            ]
            for r in pa:
                lines.append(
                    f"| {r['concurrency']} | "
                    + " | ".join(f"{r['stages_ms'].get(k, float('nan')):.1f}" for k in PERF_ANALYZER_STAGES.values())
                    + f" | {r['mean_ms']:.1f} |"
                )
        for mode, why in m.get("failures", {}).items():
            lines += ["", f"{mode} failed: {' '.join(why.split())[:400]}"]
        if "parity" in m:
            p = m["parity"]
            lines += [
                "",
                f"Parity with Ultralytics: {p['matched']}/{p['cases']} responses match."
                + (" Failures: " + "; ".join(p["failures"]) if p["failures"] else ""),
            ]
        lines += ["", "| target | measured | goal |", "|---|---|---|"]
        for name, value in results["ratios"].get(m["model"], {}).items():
            if isinstance(value, dict) and "value" in value:
                lines.append(f"| {name} | {value['value']} | {value['goal']} |")
            else:
                lines.append(f"| {name} | {value} | — |")
        lines.append("")
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    """Throughput against p99 latency, one line per mode (and one panel per model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, m in zip(axes[0], models):
        for mode, rows in m["modes"].items():
            xs, ys = [r["throughput"] for r in rows], [r["p99_ms"] for r in rows]
            ax.plot(xs, ys, marker="o", label=mode)
            for r in rows:
                ax.annotate(
                    str(r["concurrency"]),
                    (r["throughput"], r["p99_ms"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        ax.set_title(m["model"])
        ax.set_xlabel("throughput (images/s)")
        ax.set_ylabel("p99 latency (ms)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8, framealpha=0.7)
    fig.suptitle(f"{results['environment']['cpu']} ({results['environment']['cores']} cores) — labels: concurrency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
