"""How long ``mckd`` takes to answer, against ``python -c "import torch"``, in one run on one machine.

Each command runs ``--repeats`` times as a fresh process, alternating with the
others (so a busy machine slows all alike); the median wall time is reported,
with its ratio to the median of ``import torch``, and whether the answer came
from a process that imported torch (``-X importtime`` says)::

    .venv/bin/python benchmarks/startup.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands(folder: Path) -> dict[str, list[str]]:
    """What a user types, by what it is: each answers without training anything."""
    mckd = [sys.executable, "-m", "mckd.cli"]
    (folder / "typo.yaml").write_text("data: {name: files}\nmodel: {name: by_shape}\ntrain: {itertions: 10}\n")
    (folder / "type.yaml").write_text("data: {name: files}\nmodel: {name: by_shape}\ntrain: {lr: fast}\n")
    (folder / "data_typo.yaml").write_text("data: {name: files, modalitis: {}}\nmodel: {name: by_shape}\n")
    (folder / "method_typo.yaml").write_text("data: {name: multiview_digits}\nmodel: {name: multiview_mlp}\n"
                                             "method: {name: mckd, alpah: 0.1}\n")
    return {
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "mckd --help": [*mckd, "--help"],
        "mckd --version": [*mckd, "--version"],
        "mckd train missing.yaml (no such file)": [*mckd, "train", str(folder / "missing.yaml")],
        "mckd train: unknown key train.itertions": [*mckd, "train", str(folder / "typo.yaml")],
        "mckd train: wrong type train.lr": [*mckd, "train", str(folder / "type.yaml")],
        "mckd train: unknown key data.modalitis": [*mckd, "train", str(folder / "data_typo.yaml")],
        "mckd train: unknown key method.alpah": [*mckd, "train", str(folder / "method_typo.yaml")],
        "mckd list": [*mckd, "list"],
    }


def imports_torch(command: list[str]) -> bool:
    done = subprocess.run([command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True)
    return any(line.split("|")[-1].strip() == "torch" for line in done.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        todo = commands(Path(tmp))
        times: dict[str, list[float]] = {name: [] for name in todo}
        for _ in range(args.repeats):
            for name, command in todo.items():
                start = time.perf_counter()
                subprocess.run(command, capture_output=True, cwd=ROOT)
                times[name].append(time.perf_counter() - start)
        torch_time = statistics.median(times['python -c "import torch"'])
        print(f"median of {args.repeats} fresh processes each, alternating; ratio to `import torch`\n")
        print("| command | median s | ratio | imports torch |")
        print("|---|---|---|---|")
        for name, command in todo.items():
            median = statistics.median(times[name])
            print(f"| {name} | {median:.2f} | {median / torch_time:.2f} | {'yes' if imports_torch(command) else 'no'} |")


if __name__ == "__main__":
    main()
