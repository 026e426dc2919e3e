#!/usr/bin/env python3
"""`simat query` against DuckDB on the README's analyst recipes, on one scored run.

simat is timed as a whole process (start, read the tables, SQL, print CSV); DuckDB both in its
own process (`python3 -c` with the import) and in-process (the query alone, after import), on
the same Parquet files. Medians of --repeat runs; the CPU model is printed.

    pip install duckdb && cargo build --release
    python3 benches/query_peers.py --run runs/demo
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

RECIPES = {
    "relations that fail most": (
        "SELECT rel, count(*) AS queries, round(100 * sum(CASE WHEN success THEN weight ELSE 0 END)"
        " / sum(weight), 1) AS score FROM results WHERE lam = 1 GROUP BY rel ORDER BY score, rel LIMIT 5"
    ),
    "per-word success": (
        "SELECT value AS word, count(*) AS queries, round(100 * avg(CAST(success AS DOUBLE)), 1)"
        " AS success_pct FROM results WHERE lam = 1 GROUP BY value ORDER BY success_pct DESC, word"
    ),
    "scores by λ": (
        "SELECT heads, lam, round(score, 1) AS score FROM scores WHERE split = 'all'"
        " AND field = 'all' ORDER BY heads, lam"
    ),
}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a run directory whose score stage has run")
    ap.add_argument("--simat", default="target/release/simat")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    import duckdb

    tables = {
        "results": os.path.join(args.run, "score/results.parquet"),
        "scores": os.path.join(args.run, "score/scores.parquet"),
    }
    rows = duckdb.sql(f"SELECT count(*) FROM '{tables['results']}'").fetchall()[0][0]
    print(f"{cpu_model()}, {os.cpu_count()} CPUs; results.parquet: {rows} rows; median of {args.repeat}")
    print(f"{'recipe':<26} {'simat process':>14} {'duckdb process':>15} {'duckdb query':>13} {'vs process':>11}")
    for name, sql in RECIPES.items():
        def simat():
            subprocess.run(
                [args.simat, "query", args.run, sql, "--format", "csv"],
                check=True,
                stdout=subprocess.DEVNULL,
            )

        duck_sql = sql
        for t, path in tables.items():
            duck_sql = duck_sql.replace(f"FROM {t} ", f"FROM '{path}' ")
        script = f"import duckdb; duckdb.sql({duck_sql!r}).fetchall()"

        def duck_process():
            subprocess.run([sys.executable, "-c", script], check=True)

        def duck_query():
            duckdb.sql(duck_sql).fetchall()

        ts, tp, tq = (median_time(f, args.repeat) for f in (simat, duck_process, duck_query))
        print(f"{name:<26} {ts * 1e3:>11.1f} ms {tp * 1e3:>12.1f} ms {tq * 1e3:>10.1f} ms {tp / ts:>10.2f}x")


if __name__ == "__main__":
    main()
