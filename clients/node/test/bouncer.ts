/*
 * A real PgBouncer in transaction mode in front of the test cluster, for the
 * pooler tests: Debian's /usr/sbin/pgbouncer on port 25482 (files in
 * .run/node-client-pgbouncer). It refuses to run as root, so it runs as
 * `postgres` from a directory that user owns.
 */
import { execFileSync } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Client } from 'pg';
import { DATABASE_URL, sleep } from './helpers';

export const BOUNCER_PORT = Number(process.env.QUEUE_TEST_PGBOUNCER_PORT ?? 25482);
const PGBOUNCER = process.env.PGBOUNCER ?? '/usr/sbin/pgbouncer';
const DIR = resolve(__dirname, '..', '..', '..', '.run', 'node-client-pgbouncer');

export interface Bouncer {
  /** The connection string through the pooler. */
  url: string;
  stop(): void;
}

/** A pgbouncer left running by an interrupted run still holds the port: stop it. */
async function stopLeftover(): Promise<void> {
  let pid: number;
  try {
    pid = Number(readFileSync(join(DIR, 'pgbouncer.pid'), 'utf8').trim());
    if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() !== 'pgbouncer') return;
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  for (let i = 0; i < 50 && existsSync(`/proc/${pid}`); i++) await sleep(100);
}

/** Starts pgbouncer (transaction pooling, trust auth) and waits until it answers. */
export async function startBouncer(): Promise<Bouncer> {
  if (!existsSync(PGBOUNCER)) throw new Error(`pgbouncer is not installed (${PGBOUNCER}); run-tests.sh installs it with apt-get`);
  const backend = new URL(DATABASE_URL);
  await stopLeftover();
  rmSync(DIR, { recursive: true, force: true });
  mkdirSync(DIR, { recursive: true });
  writeFileSync(join(DIR, 'users.txt'), '"postgres" ""\n');
  const ini = join(DIR, 'pgbouncer.ini');
  writeFileSync(ini, `[databases]
postgres = host=${backend.hostname} port=${backend.port || 5432} dbname=postgres user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${BOUNCER_PORT}
unix_socket_dir =
auth_type = trust
auth_file = ${DIR}/users.txt
pool_mode = transaction
max_client_conn = 200
default_pool_size = 20
logfile = ${DIR}/pgbouncer.log
pidfile = ${DIR}/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
`);
  let cmd = PGBOUNCER;
  let args = ['-d', ini];
  if (process.getuid?.() === 0) {
    const pg = { uid: Number(execFileSync('id', ['-u', 'postgres']).toString()), gid: Number(execFileSync('id', ['-g', 'postgres']).toString()) };
    for (const f of [DIR, ...readdirSync(DIR).map((n) => join(DIR, n))]) chownSync(f, pg.uid, pg.gid);
    cmd = 'runuser';
    args = ['-u', 'postgres', '--', PGBOUNCER, ...args];
  }
  execFileSync(cmd, args, { stdio: 'inherit' });
  const url = `postgres://postgres@127.0.0.1:${BOUNCER_PORT}/postgres`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    const c = new Client({ connectionString: url });
    try {
      await c.connect();
      await c.query('SELECT 1');
      await c.end();
      break;
    } catch (err) {
      await c.end().catch(() => undefined);
      if (Date.now() > deadline) throw new Error(`pgbouncer did not start (${String(err)}); see ${DIR}/pgbouncer.log`);
      await sleep(100);
    }
  }
  return {
    url,
    stop() {
      try {
        process.kill(Number(readFileSync(join(DIR, 'pgbouncer.pid'), 'utf8').trim()), 'SIGTERM');
      } catch {
        /* already gone */
      }
    },
  };
}
