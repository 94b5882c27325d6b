"""Writes the run queue read by ``claims_net.py --plan-file outputs/claims_queue.json``: the
plans in the order they were run here (cost-aware priority under a shared 2-core CPU; the queue
was rewritten while running as costs became known, and the driver re-reads it before each run).

    python scripts/claims_queue.py
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import claims_net as c  # noqa: E402

P = c.plans()


def pick(plan, **kw):
    return [x for x in P[plan] if all(x[k] == v for k, v in kw.items())]


def lam(cfgs, *values):
    return [x for x in cfgs if x["weight_decay"] in values]


q = []
q += lam(pick("law", seed=0, kind="adam_cdm"), 0.5, 1.5, 5.0, 15.0)
q += pick("l2", seed=0)
q += [x for x in pick("zeta", seed=0) if x["damping"] == 0.25]
q += [dict(x, max_steps=2500) for x in pick("zeta", seed=0) if x["damping"] in (0.5, 2.0)]
# under contention (~60-70 ms a step) the rest was capped at 3,000 steps and reordered
q += lam(pick("law_gd", seed=0, kind="adam_cdm"), 5.0)
q += [dict(x, max_steps=3000) for x in lam(pick("gd_raw_low", seed=0), 3e-3)]
q += [dict(x, max_steps=3000) for x in pick("law_low", seed=0)]
# ζ sweep, seeds 1 and 2: t_gen99 only (1,500-step cap); seed 1's ζ = 1 run is also its λ = 5
# point of the law (so the law's own λ = 5, seed 1 config is left out)
q += pick("zeta", seed=1) + pick("zeta", seed=2)
q += lam(pick("law_gd", seed=0, kind="cdm"), 1e-2)
q += [dict(x, max_steps=3000) for x in lam(pick("law", seed=0, kind="adam_cdm"), 0.15)]
q += pick("l2", seed=1)
q += lam(pick("law", seed=1, kind="cdm"), 1e-3, 3e-3) + pick("law_low", seed=1)
q += lam(pick("law", seed=1, kind="cdm"), 1e-2, 3e-2, 1e-1)
q += lam(pick("law", seed=1, kind="adam_cdm"), 1.5, 15.0, 0.5, 0.15)
q += lam(pick("law_gd", seed=0, kind="adam_cdm"), 15.0)
q += lam(pick("gd_raw_low", seed=1), 3e-3)
q += lam(pick("law_gd", seed=1, kind="adam_cdm"), 5.0)
q += lam(pick("gd_raw_low", seed=0), 1e-3)
q += lam(pick("law_gd", seed=0, kind="cdm"), 0.1, 0.03)
seen, out = set(), []
for x in q:
    k = json.dumps(x, sort_keys=True)
    if k not in seen:
        seen.add(k)
        out.append(x)
Path("outputs/claims_queue.json").write_text(json.dumps(out, indent=0))
print(len(out))
