"""Step time of the guide's distributed recipe on 1 device, 2 logical CPU replicas, and 2 worker processes.

``python benchmarks/distributed.py`` runs ``docs/recipes/distributed.py`` in
each mode (``one``, ``mirrored``, a pair of ``worker`` processes on 127.0.0.1)
at B64 T100 D32 H128, 30 training steps each, for ``--rounds`` rounds in
alternating order, and writes benchmarks/results/distributed/ (results.json,
.md, .png): the median over rounds of each run's median step time, and its
ratio to one device. Every mode trains on the same global batch. Processes,
not one process: a strategy is per process, so this is the one comparison
that cannot be interleaved within a process; rounds alternate instead.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPE = os.path.join(HERE, "..", "docs", "recipes", "distributed.py")
MODES = ("one", "mirrored", "workers")


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_mode(mode, shape, steps, limit_s=900):
    """One run of ``mode``; returns the recipe's JSON (the first worker's for ``workers``)."""
    env = dict(os.environ, FASTCARRY_RECIPE_SHAPE=shape, FASTCARRY_RECIPE_STEPS=str(steps), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    if mode == "workers":
        ports = [str(p) for p in _free_ports(2)]
        argvs = [["worker", str(i), *ports] for i in range(2)]
    else:
        argvs = [[mode]]
    procs = [subprocess.Popen([sys.executable, RECIPE, *a], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for a in argvs]
    try:
        outs = [p.communicate(timeout=limit_s) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, err) in zip(procs, outs):
        if p.returncode:
            raise RuntimeError(err[-2000:])
    return json.loads(outs[0][0].strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64,100,32,128", help="B,T,D,H (global batch)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "distributed"))
    args = parser.parse_args(argv)
    from fastcarry.tools import report

    times = {m: [] for m in MODES}
    for r in range(args.rounds):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            times[mode].append(run_mode(mode, args.shape, args.steps)["step_s"])
            print(f"round {r + 1}: {mode} {times[mode][-1] * 1e3:.1f} ms/step", flush=True)
    median = {m: statistics.median(t) for m, t in times.items()}
    rows = ["| mode | replicas | median ms / step | vs one device |", "|---|---:|---:|---:|"]
    for mode, replicas in zip(MODES, (1, 2, 2)):
        rows.append(f"| {mode} | {replicas} | {median[mode] * 1e3:.1f} | {median['one'] / median[mode]:.2f}x |")
    machine = report.machine_info()
    markdown = "\n".join([f"Distributed recipe, global batch {args.shape} (B,T,D,H), {args.steps} steps, "
                          f"{args.rounds} rounds; {machine['cpu']}, {machine['cpu_count']} cores", ""] + rows)

    def plot(path):
        plt = report.require_matplotlib()
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(MODES, [median[m] * 1e3 for m in MODES], color=["tab:gray", "tab:blue", "tab:orange"])
        ax.set(ylabel="median ms per training step", title="docs/recipes/distributed.py, same global batch")
        report.save_figure(fig, path)

    report.write(args.out, {"machine": machine, "shape": args.shape, "steps": args.steps, "times_s": times,
                            "median_s": median}, markdown, plot)
    print(markdown)


if __name__ == "__main__":
    main()
