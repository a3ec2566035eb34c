"""What MCKD costs over its no-distillation baseline, measured in the real training loop.

Three variants of one config, each trained for ``--iterations`` inner
iterations with :func:`mckd.train.train`, interleaved over ``--repeats``
rounds; the best (lowest) per-iteration time of each is reported, since other
work on a shared machine only ever adds time:

- ``baseline``: ``method.alpha=0``, no meta step (the same network and data);
- ``ckd``: the CKD term over all ordered pairs of present modalities, no meta step;
- ``mckd``: CKD plus a meta step every ``method.meta_every`` iterations (the config's).

Printed: the inner-step ratio ckd / baseline (target <= 1.10), the meta
step's share of MCKD's training time, amortised over its interval (target
<= 5%), and the whole-method ratio mckd / baseline. Times come from the
``seconds`` of ``metrics.jsonl``: from the first log record to the last, so
set-up, data reading and warm-up are left out.

    .venv/bin/python benchmarks/meta_cost.py                      # the digits config, CPU
    .venv/bin/python benchmarks/meta_cost.py --config configs/X.yaml --set method.meta_every=100
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "baseline": ["method.alpha=0", "method.meta=false"],
    "ckd": ["method.meta=false"],
    "mckd": [],
}


def seconds_per_iteration(run_dir: Path) -> float:
    """Loop time per iteration between the first and the last train record."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    first, last = train[0], train[-1]
    return (last["seconds"] - first["seconds"]) / (last["iteration"] - first["iteration"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "multiview_digits.yaml"))
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    from mckd.config import apply_overrides, config_from_dict, load_raw
    from mckd.train import train

    raw = load_raw(args.config)
    log_every = max(1, args.iterations // 10)
    common = [f"train.iterations={args.iterations}", f"train.log_every={log_every}", "train.progress=false",
              "train.checkpoint_every=0", *args.overrides]
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    meta_every = config_from_dict(apply_overrides(raw, common)).method.meta_every
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, overrides in VARIANTS.items():
                run_dir = Path(tmp) / f"{name}_{repeat}"
                train(config_from_dict(apply_overrides(raw, [*common, *overrides])), run_dir)
                times[name].append(seconds_per_iteration(run_dir))
    best = {name: min(values) for name, values in times.items()}
    ckd_ratio = best["ckd"] / best["baseline"]
    meta_share = (best["mckd"] - best["ckd"]) / best["mckd"]
    whole = best["mckd"] / best["baseline"]
    print(f"config {args.config} {' '.join(args.overrides)}; {args.iterations} iterations x {args.repeats} repeats")
    print("| variant | ms per iteration (best) | all repeats |")
    print("|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {1000 * best[name]:.3f} | {', '.join(f'{1000 * v:.3f}' for v in values)} |")
    print(f"CKD inner step / baseline step: {ckd_ratio:.3f}x (target <= 1.10x)")
    print(f"meta step every {meta_every} iterations: {1000 * meta_every * (best['mckd'] - best['ckd']):.3f} ms each, "
          f"{100 * meta_share:.1f}% of MCKD training time (target <= 5%)")
    print(f"whole MCKD iteration / baseline iteration: {whole:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
