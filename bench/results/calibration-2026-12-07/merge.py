"""Merge the records of runs A (set 1), E (set 1 test supplement), D (set 2) and H (set 3), one row per case x M x setting."""
import json, sys
out, seen, diff = [], {}, 0
for f in sys.argv[2:]:
    for line in open(f):
        r = json.loads(line)
        if r.get("target_mass") is not None:
            continue
        key = (r["case"], r["multiplier"], None if r["multiplier"] == 1 else (r["layers"], r["scope"]))
        if key in seen:
            diff += seen[key]["output"] != r["output"]
            continue
        seen[key] = r
        out.append(r)
with open(sys.argv[1], "w") as fh:
    for r in out:
        fh.write(json.dumps(r, ensure_ascii=False) + "\n")
print(f"{len(out)} records; {diff} duplicates with a different output", file=sys.stderr)
