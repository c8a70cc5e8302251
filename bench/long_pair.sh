#!/usr/bin/env bash
# What one pair of two long texts costs the server: an Encode and a Tokenize call of one input
# whose text and pair are each CHARS characters of licence text, three calls each, one at a time;
# each call's time and the server's peak resident memory (VmHWM) after it. A client controls
# these sizes (up to limits.max_input_chars for the two together), so what they cost must stay
# in proportion to what the model sees.
#
#   bench/long_pair.sh [flags for `bertd serve`]
#
# Environment: CHARS (49000), OUT (target/long-pair), BERTD (bench/common.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/long-pair}
CHARS=${CHARS:-49000}
source bench/common.sh

describe_machine
port=$(free_port)
"$BERTD" serve --addr "127.0.0.1:$port" --log-level warn "$@" 2> "$OUT/server.log" &
server=$!
trap 'kill "$server" 2> /dev/null || true' EXIT
"$PY" - "127.0.0.1:$port" "$server" "$CHARS" <<'PY'
import sys, time
from pathlib import Path
sys.path.insert(0, "clients/python")
from generate import generate
sys.path.insert(0, str(generate(Path("clients/python/gen"))))
import grpc
from bert.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, tokenizer_pb2, tokenizer_pb2_grpc

addr, pid, chars = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
words = Path("/usr/share/common-licenses/GPL-3").read_text().split()
pair = common_pb2.TextInput(text=" ".join(words)[:chars], text_pair=" ".join(reversed(words))[:chars])
channel = grpc.insecure_channel(addr)
grpc.channel_ready_future(channel).result(timeout=120)
encoder, tokenizer = encoder_pb2_grpc.EncoderStub(channel), tokenizer_pb2_grpc.TokenizerStub(channel)


def peak_mib():
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(l for l in status if l.startswith("VmHWM")).split()[1]) // 1024


encoder.Encode(encoder_pb2.EncodeRequest(id="warm-up", inputs=[common_pb2.TextInput(text="warm up")]))
print(f"a pair of two texts of {chars} characters; the idle server's peak memory {peak_mib()} MiB")
calls = {
    "Encode": lambda: encoder.Encode(encoder_pb2.EncodeRequest(id="pair", inputs=[pair])),
    "Tokenize": lambda: tokenizer.Tokenize(tokenizer_pb2.TokenizeRequest(inputs=[pair])),
}
for name, call in calls.items():
    for _ in range(3):
        start = time.perf_counter()
        call()
        print(f"{name}: {(time.perf_counter() - start) * 1e3:.0f} ms, peak memory {peak_mib()} MiB")
PY
