// graphile-worker draining the same workload shape as carepath's PostgreSQL burst, on a copy
// of the same database: one job per due timer, and each job, in one transaction, updates its
// instance with a seq check, inserts a history row and an outbox row; graphile-worker removes
// the job. Run by worker/benches/postgres.rs:
//
//   node drain.js DATABASE_URL CONCURRENCY DUE_BY_MS
//
// Prints one JSON line: {"jobs": N, "seconds": S, "concurrency": C}.
const { run, makeWorkerUtils } = require("graphile-worker");
const { Pool } = require("pg");

async function main() {
  const [connectionString, concurrencyText, dueBy] = process.argv.slice(2);
  const concurrency = Number(concurrencyText);
  const pool = new Pool({ connectionString, max: 4 });
  const utils = await makeWorkerUtils({ connectionString });
  await utils.migrate();
  const { rows: timers } = await pool.query(
    "SELECT t.instance_id, t.key, i.seq FROM timers t JOIN instances i ON i.id = t.instance_id " +
      "WHERE t.due <= $1 ORDER BY t.due, t.instance_id",
    [dueBy]
  );
  for (let i = 0; i < timers.length; i += 5000) {
    await utils.addJobs(
      timers.slice(i, i + 5000).map((t) => ({
        identifier: "step",
        payload: { id: Number(t.instance_id), key: t.key, seq: Number(t.seq) },
      }))
    );
  }
  await utils.release();
  const now = Date.now();
  const step = async (job, helpers) => {
    await helpers.withPgClient(async (client) => {
      await client.query("BEGIN");
      try {
        const body = JSON.stringify({ state: "reminded", seq: job.seq + 1, key: job.key, at: now });
        const done = await client.query(
          "UPDATE instances SET state = 'reminded', seq = seq + 1, body = $3, updated_at = $4 WHERE id = $1 AND seq = $2",
          [job.id, job.seq, body, now]
        );
        if (done.rowCount !== 1) throw new Error(`instance ${job.id} moved`);
        await client.query(
          "INSERT INTO history (instance_id, seq, at, from_state, to_state, cause, notes) VALUES ($1, $2, $3, 'waiting', 'reminded', $4, '[]')",
          [job.id, job.seq + 1, now, JSON.stringify({ timer: job.key })]
        );
        await client.query(
          "INSERT INTO outbox (key, instance_id, pathway_version_id, template, role, family, status, not_before, created_at, updated_at) " +
            "SELECT $1, id, pathway_version_id, 'reminded', 'coordinator', 0, 'queued', $2, $2, $2 FROM instances WHERE id = $3",
          [`${job.id}:g:${job.seq + 1}`, now, job.id]
        );
        await client.query("COMMIT");
      } catch (e) {
        await client.query("ROLLBACK");
        throw e;
      }
    });
  };
  const started = process.hrtime.bigint();
  const runner = await run({
    connectionString,
    concurrency,
    noHandleSignals: true,
    pollInterval: 1000,
    taskList: { step },
    logger: new (require("graphile-worker").Logger)(() => () => {}),
  });
  for (;;) {
    const { rows } = await pool.query("SELECT count(*)::int AS n FROM graphile_worker.jobs");
    if (rows[0].n === 0) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  await runner.stop();
  const { rows: moved } = await pool.query("SELECT count(*)::int AS n FROM history WHERE to_state = 'reminded'");
  await pool.end();
  console.log(JSON.stringify({ jobs: timers.length, moved: moved[0].n, seconds, concurrency }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
