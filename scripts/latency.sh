#!/usr/bin/env bash
# p50/p90/p99 of N sequential requests of one code snippet against a running nsbox, with
# curl's own timer: `scripts/latency.sh [URL] [N] [CODE]`.
set -euo pipefail
url=${1:-http://127.0.0.1:8080}
n=${2:-100}
code=${3:-print(2**2)}
body=$(python3 -c 'import json,sys; print(json.dumps({"code": sys.argv[1], "lang": "python"}))' "$code")
for _ in $(seq "$n"); do
	curl -s -o /dev/null -w '%{time_total}\n' -H 'Content-Type: application/json' -d "$body" "$url/v1/tools/code"
done | sort -n | awk '{a[NR]=$1} END {printf "n=%d p50=%.1f ms p90=%.1f ms p99=%.1f ms\n", NR, a[int(NR*0.5)]*1000, a[int(NR*0.9)]*1000, a[int(NR*0.99)]*1000}'
