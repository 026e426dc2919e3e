# Peer for benches/queries_rss.sh: DuckDB generates SIMAT's one-slot queries from the same dataset.parquet and writes them
# to Parquet (query rows with value/target/weights basis), 2 threads.
import duckdb, time, sys
# usage: python benches/queries_peers.py RUN   (a run whose select stage finished; keep it with
# SIMAT_KEEP=1 benches/queries_rss.sh). Run it under /usr/bin/time -v for the peak RSS.
run = sys.argv[1]
con = duckdb.connect(); con.execute("SET threads=2")
t = time.time()
con.execute(f"""
COPY (
WITH d AS (SELECT dataset_id, region_id, image_id, subj, rel, obj FROM '{run}/select/dataset.parquet'),
tr AS (SELECT subj, rel, obj, list(DISTINCT image_id) AS imgs, count(DISTINCT image_id) AS n FROM d GROUP BY ALL),
q AS (
  SELECT d.dataset_id, d.region_id, s.slot,
         CASE s.slot WHEN 'subj' THEN d.subj WHEN 'rel' THEN d.rel ELSE d.obj END AS value,
         CASE s.slot WHEN 'subj' THEN u.subj WHEN 'rel' THEN u.rel ELSE u.obj END AS target
  FROM d, (VALUES ('subj'), ('rel'), ('obj')) s(slot), tr u
  WHERE CASE s.slot WHEN 'subj' THEN u.rel = d.rel AND u.obj = d.obj AND u.subj <> d.subj
                    WHEN 'rel'  THEN u.subj = d.subj AND u.obj = d.obj AND u.rel <> d.rel
                    ELSE u.subj = d.subj AND u.rel = d.rel AND u.obj <> d.obj END
    AND (u.n > 1 OR u.imgs[1] <> d.image_id)
)
SELECT *, count(*) OVER (PARTITION BY value) AS n_same_value FROM q
) TO '{run}/duck_queries.parquet' (FORMAT parquet)
""")
el = time.time() - t
print("duckdb rows", con.execute(f"SELECT count(*) FROM '{run}/duck_queries.parquet'").fetchone()[0], f"{el:.1f}s")
