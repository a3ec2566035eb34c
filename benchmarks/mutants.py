"""Deliberately broken copies of the method's code: does the test suite catch every one?

Each mutant changes one line of ``src/mckd/method/`` (or the loop's
combination of loss terms) the way a plausible bug would: a ratio inverted,
a teacher not detached, a mask ignored, a meta step in train mode, a sign
flipped. (Counting a modality's pair with itself, in MCKD or LCKD, is not among
them: its distance is zero, so that change alters nothing.) For each, the source tree is copied, the one change applied, and
the method's tests run against the copy (``PYTHONPATH``); a mutant is
*caught* when some test fails. A mutant that survives is a gap in the tests
(or a change that does not alter behaviour, which the list avoids).

    .venv/bin/python benchmarks/mutants.py                 # every mutant, the method's tests
    .venv/bin/python benchmarks/mutants.py --tests tests   # the whole suite per mutant (slow)
    .venv/bin/python benchmarks/mutants.py --only distill  # mutants whose name contains 'distill'
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, file under src/mckd, the text, its broken version)
MUTANTS: list[tuple[str, str, str, str]] = [
    ("weights: softmax of zeros (uniform)", "method/weights.py",
     "return torch.softmax(self.raw, dim=0)", "return torch.softmax(self.raw * 0, dim=0)"),
    ("weights: relu without eps", "method/weights.py", "return torch.relu(self.raw) + RELU_EPS", "return torch.relu(self.raw)"),
    ("weights: constant start", "method/weights.py",
     "torch.rand(len(modalities), generator=generator)", "torch.ones(len(modalities))"),
    ("fill: sum instead of mean", "method/fill.py",
     "mean = kept.sum(dim=1, keepdim=True) / counts", "mean = kept.sum(dim=1, keepdim=True)"),
    ("fill: mean added to present features too", "method/fill.py", "return kept + (1 - mask) * mean", "return kept + mean"),
    ("fill: zero fill keeps missing entries", "method/fill.py",
     "return features * _expand_mask(present, features)", "return features"),
    ("distill: teacher not detached (fused)", "method/distill.py",
     "torch.cdist(flat.detach(), flat,", "torch.cdist(flat, flat,"),
    ("distill: teacher not detached (broadcast)", "method/distill.py",
     "teacher = flat.detach().unsqueeze(2)", "teacher = flat.unsqueeze(2)"),
    ("distill: ratio inverted", "method/distill.py",
     "ratio = w.unsqueeze(1) / w.unsqueeze(0)", "ratio = w.unsqueeze(0) / w.unsqueeze(1)"),
    ("distill: the teacher's weight left out of the ratio", "method/distill.py",
     "ratio = w.unsqueeze(1) / w.unsqueeze(0)", "ratio = (1.0 / w.unsqueeze(0)).expand(n, n)"),
    ("distill: pairs with a missing modality counted", "method/distill.py",
     "pair = present.unsqueeze(2) & present.unsqueeze(1)", "pair = present.unsqueeze(2) | present.unsqueeze(1)"),
    ("distill: no mean over the batch", "method/distill.py", "return weighted.sum() / max(batch, 1)", "return weighted.sum()"),
    ("distill: L2 mean not squared (fused)", "method/distill.py",
     "(norm if p == 1 else norm * norm) / flat.shape[-1]", "(norm if p == 1 else norm) / flat.shape[-1]"),
    ("model: encoders see missing samples", "method/model.py",
     "rows = present[:, n].nonzero(as_tuple=True)[0]  # (P_n,)",
     "rows = torch.arange(present.shape[0], device=present.device)  # (P_n,)"),
    ("model: concatenation in the wrong order", "method/model.py",
     "return filled.flatten(start_dim=1, end_dim=2)", "return filled.transpose(1, 2).flatten(start_dim=1, end_dim=2)"),
    ("model: feature scale ignored", "method/model.py",
     "filled = filled * feature_scale.reshape(shape).to(filled.dtype)", "filled = filled"),
    ("model: HeMIS variance over missing modalities too", "method/model.py",
     "variance = ((filled - mean.unsqueeze(1)).pow(2) * mask).sum(dim=1) / count",
     "variance = ((filled - mean.unsqueeze(1)).pow(2)).sum(dim=1) / count"),
    ("meta: meta step in train mode", "method/meta.py", "    model.eval()\n", "    model.train()\n"),
    ("meta: no optimiser step", "method/meta.py", "    optimizer.step()\n    return loss.detach()",
     "    return loss.detach()"),
    ("mckd: meta steps although meta is false", "method/mckd.py",
     "return self.options.meta and iteration % self.options.meta_every == 0",
     "return iteration % self.options.meta_every == 0"),
    ("mckd: alpha ignored", "method/mckd.py", 'return {"ckd": Term(options.alpha, ckd)}', 'return {"ckd": Term(1.0, ckd)}'),
    ("mckd: look-ahead with detached weights", "method/mckd.py",
     "detach_weights=not lookahead", "detach_weights=True"),
    ("bilevel: look-ahead steps uphill", "method/bilevel.py",
     "params[name] - lookahead_lr * scale * grad", "params[name] + lookahead_lr * scale * grad"),
    ("lckd: the worst modality elected", "method/lckd.py",
     "return max(range(len(values)), key=lambda n: (values[n], -n))",
     "return min(range(len(values)), key=lambda n: (values[n], -n))"),
    ("lckd: samples without the teacher distilled too", "method/lckd.py",
     "pair = present & present[:, teacher : teacher + 1]", "pair = present.clone()"),
    ("shaspec: missing modality gets fused, not shared, features", "method/shaspec.py",
     "fill_missing_features(s, present)", "fill_missing_features(f, present)"),
    ("shaspec: alignment not averaged over the batch", "method/shaspec.py",
     "return (distance * pair.to(distance.dtype)).sum() / max(batch, 1)",
     "return (distance * pair.to(distance.dtype)).sum()"),
    ("base: the method's terms left out of the loss", "method/base.py",
     "return task_loss if extra is None else task_loss + extra", "return task_loss"),
]

METHOD_TESTS = ["tests/test_method_weights.py", "tests/test_method_fill.py", "tests/test_method_distill.py",
                "tests/test_method_model.py", "tests/test_method_meta.py", "tests/test_bilevel.py",
                "tests/test_peers.py", "tests/test_methods.py", "tests/test_train.py", "tests/test_fuzz_masks.py",
                "tests/test_amp.py", "tests/test_analyses.py"]


def run_mutant(name: str, relative: str, old: str, new: str, tests: list[str], timeout: float) -> tuple[str, float]:
    """``("caught" | "survived" | "timeout", seconds)`` for one mutant."""
    with tempfile.TemporaryDirectory(prefix="mckd_mutant_") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        target = src / "mckd" / relative
        text = target.read_text()
        if old and text.count(old) != 1:
            raise SystemExit(f"mutant {name!r}: {old!r} occurs {text.count(old)} times in {relative}, expected once")
        target.write_text(text.replace(old, new))
        env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout", time.perf_counter() - start
        return ("caught" if done.returncode != 0 else "survived"), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", nargs="+", default=METHOD_TESTS, help="test files or folders to run per mutant")
    parser.add_argument("--only", default="", help="run the mutants whose name contains this")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutant")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if args.only in m[0]]
    control, seconds = run_mutant("control", "method/base.py", "", "", args.tests, args.timeout)
    print(f"control: the unchanged copy {'passes' if control == 'survived' else 'FAILS'} the tests ({seconds:.0f} s)")
    if control != "survived":
        return 2
    results = []
    for name, relative, old, new in chosen:
        outcome, seconds = run_mutant(name, relative, old, new, args.tests, args.timeout)
        results.append(outcome)
        print(f"{outcome:9s} {seconds:6.1f}s  {name}", flush=True)
    caught = results.count("caught")
    print(f"{caught} of {len(results)} mutants caught by {' '.join(args.tests)}")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
