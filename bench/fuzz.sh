#!/usr/bin/env bash
# Fuzzing of every parser that reads input from a database session: API keys (and their check
# against the stored hash), JWTs, signed tenant contexts, uuids, key ids, scope names, and the text
# and binary forms of vectors. N inputs per parser (default 1,000,000: random bytes and text, text
# in the parser's alphabet, changed valid inputs), each through the real sutra-core function under
# catch_unwind and judged against an independent reading of its format. Prints per parser inputs,
# accepted, rejected, panics, bad accepts, bad rejects and seconds; fails on any of the last three
# being non-zero. Plain Rust, no PostgreSQL (about half a minute for 1,000,000 on 2 cores).
# Run: bench/fuzz.sh [N] [SEED]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$REPO"
cargo run --release -q -p sutra-bench --bin fuzz_parsers -- "$@"
echo "reproduce: bench/fuzz.sh${*:+ $*}"
