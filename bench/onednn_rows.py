"""The memory oneDNN's dense products hold as batches take many row counts, per row policy.

Runs the three products of an all-MiniLM-L6-v2 layer (384->384, 384->1536 with GELU fused,
1536->384) through libtorch's oneDNN entry with packed weights, as bertd does, for every token
count from 1 to the budget in turn, rounded by the policy, and prints the process's resident
memory after each pass. Random weights: memory and speed do not depend on their values.

    .venv/bin/python bench/onednn_rows.py --policy exact --passes 4
    .venv/bin/python bench/onednn_rows.py --policy geometric --passes 4
    .venv/bin/python bench/onednn_rows.py --dtype bf16 --policy tiles --passes 4

`geometric` is bertd's policy (src/model/rows.rs): 16 buckets per doubling of the count, whole
AMX tiles (16 rows) at least in bf16. `tiles` is bf16's policy before it: multiples of 16 rows.
The seconds a pass compare the policies' speed, kernels built included.
Environment variables oneDNN and glibc read (ONEDNN_PRIMITIVE_CACHE_CAPACITY,
MALLOC_MMAP_THRESHOLD_) apply as usual, which is how their effect was measured.
"""

import argparse
import time

import torch

HIDDEN, INTERMEDIATE = 384, 1536
BUCKETS_PER_DOUBLING = 16


def rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


AMX_TILE_ROWS = 16


def round_up(tokens, step):
    return -(-tokens // step) * step


def geometric(tokens, min_step):
    return round_up(tokens, max(min_step, (1 << (tokens.bit_length() - 1)) // BUCKETS_PER_DOUBLING))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", choices=["exact", "geometric", "tiles"], required=True)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    min_step = AMX_TILE_ROWS if args.dtype == "bf16" else 1
    rows_of = {
        "exact": lambda tokens: tokens,
        "geometric": lambda tokens: geometric(tokens, min_step),
        "tiles": lambda tokens: round_up(tokens, AMX_TILE_ROWS),
    }[args.policy]
    products = []
    for inputs, outputs, activation in [
        (HIDDEN, HIDDEN, "none"),
        (HIDDEN, INTERMEDIATE, "gelu"),
        (INTERMEDIATE, HIDDEN, "none"),
    ]:
        weight = torch.ops.mkldnn._reorder_linear_weight(
            torch.randn(outputs, inputs, dtype=dtype), args.max_tokens
        )
        algorithm = "none" if activation == "gelu" else ""
        bias = torch.randn(outputs, dtype=dtype)
        products.append((inputs, weight, bias, activation, algorithm))
    counts = sorted({rows_of(tokens) for tokens in range(1, args.max_tokens + 1)})
    print(f"{args.dtype}, policy {args.policy}: {len(counts)} row counts up to {args.max_tokens} tokens; "
          f"RSS at the start {rss_mib()} MiB", flush=True)
    for n in range(1, args.passes + 1):
        start = time.perf_counter()
        for tokens in range(1, args.max_tokens + 1):
            rows = rows_of(tokens)
            for inputs, weight, bias, activation, algorithm in products:
                torch.ops.mkldnn._linear_pointwise(
                    torch.zeros(rows, inputs, dtype=dtype), weight, bias, activation, [], algorithm
                )
        print(f"pass {n}: RSS {rss_mib()} MiB, {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
