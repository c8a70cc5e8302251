#!/usr/bin/env python3
"""A Python gRPC client for bertd, with stubs generated from proto/ alone: proof that any
language's client works from the contract. Run by tests/python_client.rs against a real server
serving tests/fixtures/models/classifier_single; exits non-zero on the first failure.

With --ca (the server's CA bundle) it connects over TLS, and with --api-key it sends the key on
every call (`authorization: Bearer KEY`) and checks that a call without it is refused.

usage: client_test.py --addr HOST:PORT [--ca FILE] [--api-key KEY]
"""
import argparse
import importlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider

ROOT = Path(__file__).resolve().parents[2]
# The stubs come from the Python client example's generator (clients/python/generate.py).
sys.path.insert(0, str(ROOT / "clients" / "python"))
from generate import generate  # noqa: E402

REFERENCES = ROOT / "tests" / "fixtures" / "references" / "classifier_single.json"


def wait_until_serving(channel, health_pb2, health_pb2_grpc, seconds=60):
    """The server may still be starting: wait for it to answer and report SERVING."""
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + seconds
    while True:
        try:
            status = health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=5).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the server did not become SERVING")
        time.sleep(0.1)


def open_channel(args, with_key=True):
    """Plaintext, or TLS trusting --ca (the server's certificate names localhost); the API key,
    if any, sent on every call by gRPC's own call credentials."""
    if not args.ca:
        return grpc.insecure_channel(args.addr)
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(args.ca).read_bytes())
    if args.api_key and with_key:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(args.api_key))
    return grpc.secure_channel(args.addr, credentials,
                               options=[("grpc.ssl_target_name_override", "localhost")])


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--ca", default=None)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    refs = json.loads(REFERENCES.read_text())

    with tempfile.TemporaryDirectory() as out:
        sys.path.insert(0, str(generate(Path(out))))
        common = importlib.import_module("bert.v1.common_pb2")
        enc = importlib.import_module("bert.v1.encoder_pb2")
        enc_grpc = importlib.import_module("bert.v1.encoder_pb2_grpc")
        cls = importlib.import_module("bert.v1.classifier_pb2")
        cls_grpc = importlib.import_module("bert.v1.classifier_pb2_grpc")
        tok = importlib.import_module("bert.v1.tokenizer_pb2")
        tok_grpc = importlib.import_module("bert.v1.tokenizer_pb2_grpc")
        model = importlib.import_module("bert.v1.model_pb2")
        model_grpc = importlib.import_module("bert.v1.model_pb2_grpc")

        def text_input(r):
            if r["text_pair"] is None:
                return common.TextInput(text=r["text"])
            return common.TextInput(text=r["text"], text_pair=r["text_pair"])

        passed = 0
        with open_channel(args) as channel:
            wait_until_serving(channel, health_pb2, health_pb2_grpc)
            info = model_grpc.ModelStub(channel).GetInfo(model.GetInfoRequest())
            check(list(info.labels) == ["negative", "neutral", "positive"], f"labels {info.labels}")
            check(info.default_activation == "softmax", info.default_activation)
            passed += 1

            # Classify: many inputs in one call, scores equal to transformers'.
            response = cls_grpc.ClassifierStub(channel).Classify(
                cls.ClassifyRequest(id="py", inputs=[text_input(r) for r in refs]))
            check(response.id == "py", response.id)
            for r, result in zip(refs, response.results):
                for label in result.labels:
                    want = r["softmax"][label.index]
                    check(abs(label.score - want) <= 1e-5, f"{label} vs {want}")
            passed += 1

            # Encode with options: normalised 8-dimensional CLS vectors.
            response = enc_grpc.EncoderStub(channel).Encode(enc.EncodeRequest(
                id="e", inputs=[common.TextInput(text="hello"), common.TextInput(text="world")],
                options=enc.EncodeOptions(pooling=enc.POOLING_CLS, normalize=True, dimensions=8)))
            check(len(response.results) == 2, response)
            for result in response.results:
                check(len(result.embedding) == 8, len(result.embedding))
                norm = math.sqrt(sum(v * v for v in result.embedding))
                check(abs(norm - 1.0) < 1e-5, f"norm {norm}")
                check(result.usage.tokens >= 3, result.usage)
            passed += 1

            # A bad call gets its code and a message naming the field.
            try:
                enc_grpc.EncoderStub(channel).Encode(enc.EncodeRequest(id="bad"))
                raise AssertionError("an empty request was accepted")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code())
                check("inputs" in e.details(), e.details())
            passed += 1

            # Streams: one response per request, in order, with per-item errors.
            def requests():
                for i in range(200):
                    inputs = [] if i == 7 else [common.TextInput(text=f"text number {i}")]
                    yield cls.ClassifyRequest(id=str(i), inputs=inputs, options=cls.ClassifyOptions(top_k=1))
            ids = []
            for response in cls_grpc.ClassifierStub(channel).ClassifyStream(requests()):
                ids.append(response.id)
                if response.id == "7":
                    check(response.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], response.error)
                else:
                    check(len(response.results[0].labels) == 1, response)
            check(ids == [str(i) for i in range(200)], ids[:10])
            passed += 1

            def encode_requests():
                for i in range(300):
                    yield enc.EncodeRequest(id=f"s{i}", inputs=[common.TextInput(text="stream " * (i % 20))])
            ids = [r.id for r in enc_grpc.EncoderStub(channel).EncodeStream(encode_requests())]
            check(ids == [f"s{i}" for i in range(300)], ids[:10])
            passed += 1

            # Tokenize: the ids transformers gave.
            response = tok_grpc.TokenizerStub(channel).Tokenize(
                tok.TokenizeRequest(inputs=[text_input(r) for r in refs]))
            for r, result in zip(refs, response.results):
                check([t.id for t in result.tokens] == r["input_ids"], r["text"])
            passed += 1

            # Health, per service.
            health = health_pb2_grpc.HealthStub(channel)
            for service in ["", "bert.v1.Encoder", "bert.v1.Classifier"]:
                status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
                check(status == health_pb2.HealthCheckResponse.SERVING, f"{service!r}: {status}")
            passed += 1

            # Tracing: OpenTelemetry's own SDK injects the W3C trace context into the call's
            # metadata; the test that runs this checks that the server's span continues it.
            tracer = TracerProvider().get_tracer("bertd-python-client")
            with tracer.start_as_current_span("client-encode") as span:
                carrier = {}
                propagate.inject(carrier)
                check("traceparent" in carrier, carrier)
                enc_grpc.EncoderStub(channel).Encode(
                    enc.EncodeRequest(id="traced", inputs=[common.TextInput(text="traced call")]),
                    metadata=list(carrier.items()))
                context = span.get_span_context()
                print(f"TRACE {context.trace_id:032x} {context.span_id:016x}")
            passed += 1

        if args.api_key:
            # Without the key: refused, with the one message for a missing or a wrong key.
            with open_channel(args, with_key=False) as keyless:
                try:
                    enc_grpc.EncoderStub(keyless).Encode(
                        enc.EncodeRequest(id="no-key", inputs=[common.TextInput(text="hello")]))
                    raise AssertionError("a call without the key was answered")
                except grpc.RpcError as e:
                    check(e.code() == grpc.StatusCode.UNAUTHENTICATED, e.code())
                    check("API key" in e.details(), e.details())
            passed += 1
    print(f"{passed} passed, 0 failed")


if __name__ == "__main__":
    main()
