#!/usr/bin/env python3
"""Prints bertd's runs against the baselines of the same run, as a Markdown table.

usage: ratios.py BERTD_JSON[,BERTD_JSON...] BASELINES_JSON [SERVER_FLAGS]

Several `bertd bench` reports of one server's flags (streams, then unary calls) make one table.
"""
import json
import sys


def main():
    reports = [json.load(open(path)) for path in sys.argv[1].split(",")]
    base = json.load(open(sys.argv[2]))
    flags = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else "default settings"
    st = base["sentence_transformers"]["inputs_per_s"]
    print(f"\n{base['inputs']} inputs, {base['threads']} threads; bertd serve with {flags}\n")
    print("| what | inputs/s | vs sentence-transformers | vs ONNX Runtime fp32 | p50 ms | p99 ms | padding ratio |")
    print("|---|---|---|---|---|---|---|")
    onnx = base.get("onnx_fp32", {}).get("inputs_per_s")
    for name, key in [("sentence-transformers encode(32)", "sentence_transformers"),
                      ("transformers forward, sorted", "torch_sorted"),
                      ("ONNX Runtime fp32, sorted", "onnx_fp32"),
                      ("sentence-transformers encode(32), bf16", "sentence_transformers_bf16"),
                      ("transformers forward, sorted, bf16", "torch_sorted_bf16")]:
        if key in base:
            rate = base[key]["inputs_per_s"]
            vs_onnx = f"{rate / onnx:.2f}" if onnx else "-"
            cos = base[key].get("min_cosine")
            note = f" (min cosine {cos:.5f})" if cos is not None else ""
            print(f"| {name}{note} | {rate:.1f} | {rate / st:.2f} | {vs_onnx} | | | |")
    for run in (run for report in reports for run in report["runs"]):
        rate = run["inputs_per_s"]
        vs_onnx = f"{rate / onnx:.2f}" if onnx else "-"
        padding = run["padding_ratio"]
        padding = f"{padding:.3f}" if padding is not None else "-"
        print(f"| bertd {run['mode']} x{run['concurrency']} (gRPC, end to end) | {rate:.1f} | "
              f"{rate / st:.2f} | {vs_onnx} | {run['latency_ms_p50']:.1f} | {run['latency_ms_p99']:.1f} | {padding} |")
    dense = base.get("dense_ceiling")
    if dense:
        rate = dense["inputs_per_s"]
        print(f"\nCeiling: the dense layers alone ({dense.get('kernel', 'sgemm')}, "
              f"{dense['gflop_per_s']:.0f} GFLOP/s, "
              f"{dense['tokens']} real tokens, no padding) run at {rate:.1f} inputs/s, "
              f"{rate / st:.2f}x sentence-transformers.")
    outputs = base.get("bertd_outputs")
    if outputs:
        print(f"\nbertd's embeddings of the corpus (`bertd encode`, same dtype) against "
              f"sentence-transformers' fp32 ones: min cosine {outputs['min_cosine']:.5f}")
    rss = max((r.get("server_peak_rss_bytes") or 0 for r in reports), default=0)
    if rss:
        print(f"\nbertd's peak resident memory: {rss / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
