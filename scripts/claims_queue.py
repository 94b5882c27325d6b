"""Writes the run queue (outputs/claims_queue.json) read by claims_net.py --plan-file: the plans
in the order they were run here (cost-aware priority under a shared 2-core CPU)."""

import json
import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import claims_net as c

P = c.plans()


def pick(plan, **kw):
    return [x for x in P[plan] if all(x[k] == v for k, v in kw.items())]


q = []
q += [x for x in pick("law", seed=0, kind="adam_cdm") if x["weight_decay"] != 0.15]
q += pick("l2", seed=0) + pick("zeta", seed=0)
q += pick("law_low", seed=0)
q += [x for x in pick("law_gd", seed=0, kind="adam_cdm") if x["weight_decay"] == 5.0]
q += [x for x in pick("gd_raw_low", seed=0) if x["weight_decay"] == 3e-3]
q += [x for x in pick("law_gd", seed=0, kind="cdm") if x["weight_decay"] == 1e-2]
q += [x for x in pick("law", seed=0, kind="adam_cdm") if x["weight_decay"] == 0.15]
q += pick("law", seed=1, kind="cdm") + pick("law_low", seed=1)
q += pick("law", seed=1, kind="adam_cdm")
q += pick("l2", seed=1) + pick("zeta", seed=1) + pick("zeta", seed=2)
q += [x for x in pick("law_gd", seed=0, kind="adam_cdm") if x["weight_decay"] == 15.0]
q += [x for x in pick("gd_raw_low", seed=1) if x["weight_decay"] == 3e-3]
q += [x for x in pick("law_gd", seed=1, kind="adam_cdm") if x["weight_decay"] == 5.0]
q += [x for x in pick("gd_raw_low", seed=0) if x["weight_decay"] == 1e-3]
q += [x for x in pick("law_gd", seed=0, kind="cdm") if x["weight_decay"] != 1e-2]
seen, out = set(), []
for x in q:
    k = json.dumps(x, sort_keys=True)
    if k not in seen:
        seen.add(k)
        out.append(x)
json.dump(out, open("outputs/claims_queue.json", "w"), indent=0)
print(len(out))
