# Sourced by the scripts: one build cache outside the clone, so later runs
# on the same machine are quick.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/starling/target}"
export PATH="$HOME/.cargo/bin:$PATH"
