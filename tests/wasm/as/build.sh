#!/bin/sh
# Compile each filter in assembly/ (except common.ts) to ../NAME.wasm.
set -e
cd "$(dirname "$0")"
for src in assembly/*.ts; do
  name=$(basename "$src" .ts)
  [ "$name" = common ] && continue
  npx asc "$src" -b "../$name.wasm" --use abort=abort_proc_exit --optimize --noAssert 2>&1 \
    | grep -v "AS201\|utoa32\|~~~~\|lib/number.ts\|^$" || true
  echo "built ../$name.wasm"
done
