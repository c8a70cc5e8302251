#!/usr/bin/env python3
"""bertd from Python with grpcio and stubs generated from proto/ (generate.py): a unary Encode, a
unary Classify, and a bulk encode streamed through EncodeStream with its order kept.

    python clients/python/example.py --addr 127.0.0.1:50051 [--ca ca.crt --api-key KEY]

It prints one JSON object: the vectors, the labels, and what the stream returned. For bulk jobs
on files, bertctl (this repository's client) does the same loop with retries, several servers
and resuming; this is the loop to write when calling bertd from your own Python code.
"""
import argparse
import itertools
import json
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import generate  # noqa: E402

sys.path.insert(0, str(generate(Path(__file__).resolve().parent / "gen")))
from bert.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2  # noqa: E402
from bert.v1 import encoder_pb2, encoder_pb2_grpc  # noqa: E402

# Inputs per stream message: a few dozen amortise the per-message cost.
BATCH = 32


def connect(addr, ca=None, api_key=None):
    """Plaintext, or TLS trusting `ca`; the API key goes on every call as `authorization: Bearer`."""
    if ca is None:
        return grpc.insecure_channel(addr)
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())
    if api_key:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(api_key))
    return grpc.secure_channel(addr, credentials)


def encode_all(stub, texts):
    """Embeddings of `texts`, in order, through one stream. The server answers every request once,
    in request order, so the answers line up with the requests; a request it refuses comes back
    with `error` set instead of failing the stream."""
    chunks = [texts[i:i + BATCH] for i in range(0, len(texts), BATCH)]

    def requests():
        for n, chunk in enumerate(chunks):
            yield encoder_pb2.EncodeRequest(
                id=str(n), inputs=[common_pb2.TextInput(text=t) for t in chunk])

    vectors = []
    for n, response in enumerate(stub.EncodeStream(requests(), wait_for_ready=True)):
        assert response.id == str(n), f"answer {response.id} for request {n}"
        if response.HasField("error") and response.error.code != 0:
            raise RuntimeError(f"request {n}: {response.error.message}")
        vectors.extend(list(r.embedding) for r in response.results)
    return vectors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--ca")
    parser.add_argument("--api-key")
    parser.add_argument("--stream-inputs", type=int, default=1000)
    args = parser.parse_args()

    with connect(args.addr, args.ca, args.api_key) as channel:
        encoder = encoder_pb2_grpc.EncoderStub(channel)
        texts = [common_pb2.TextInput(text="A man is eating food."),
                 common_pb2.TextInput(text="A man eats.")]
        encoded = encoder.Encode(encoder_pb2.EncodeRequest(id="example", inputs=texts),
                                 wait_for_ready=True, timeout=30)
        classified = classifier_pb2_grpc.ClassifierStub(channel).Classify(
            classifier_pb2.ClassifyRequest(id="example", inputs=texts), timeout=30)
        corpus = [f"bulk text {i}: " + "word " * (i % 17)
                  for i in itertools.islice(itertools.count(), args.stream_inputs)]
        streamed = encode_all(encoder, corpus)

    print(json.dumps({
        "encode": [list(r.embedding) for r in encoded.results],
        "classify": [[{"label": l.label, "score": l.score} for l in r.labels]
                     for r in classified.results],
        "stream": {"texts": corpus, "vectors": streamed},
    }))


if __name__ == "__main__":
    main()
