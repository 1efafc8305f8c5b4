import { Client, type ClientConfig } from 'pg';
import { type BackoffOptions, backoffDelay } from './backoff';

/**
 * Where wake-ups come from, besides the worker's poll timer: LISTEN on one
 * dedicated connection ({@link Listener}). With `pooler: true` there is none:
 * the worker's claim itself waits in the server (`queue_pop(..., wait)`, in
 * `Worker.claim`).
 *
 * @internal
 */
export interface WakeSource {
  /** Starts listening; resolves after the first connection attempt (successful or not). */
  start(): Promise<void>;
  /** Stops for good and closes its connection. */
  stop(): Promise<void>;
}

/** @internal What the listener tells the worker. */
export interface ListenerHooks {
  /** A notification arrived for this queue. */
  notify(queue: string): void;
  /** LISTEN is in place on every channel (again, after a reconnect: wake-ups may have been missed meanwhile). */
  connected(reconnect: boolean): void;
  /** The connection failed or was lost; a reconnect is scheduled. */
  error(err: Error): void;
}

/**
 * One LISTEN connection per worker, on `queue_<name>` for each of its queues.
 * Reconnects with exponential backoff after any drop (terminated backend,
 * server restart, network) and checks the connection with a ping.
 *
 * @internal
 */
export class Listener implements WakeSource {
  private client: Client | null = null;
  private stopped = false;
  private failures = 0;
  private everConnected = false;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private pingTimer: NodeJS.Timeout | null = null;
  private readonly byChannel: Map<string, string>;

  constructor(
    private readonly config: ClientConfig,
    queues: readonly string[],
    private readonly hooks: ListenerHooks,
    private readonly backoff: Required<BackoffOptions>,
    private readonly pingMs: number,
  ) {
    this.byChannel = new Map(queues.map((q) => [`queue_${q}`, q]));
  }

  start(): Promise<void> {
    return this.connect();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.reconnectTimer = this.pingTimer = null;
    const client = this.client;
    this.client = null;
    if (client) await client.end().catch(() => undefined);
  }

  private async connect(): Promise<void> {
    this.reconnectTimer = null;
    if (this.stopped) return;
    const client = new Client(this.config);
    let dropped = false;
    const drop = (err: Error): void => {
      if (dropped) return;
      dropped = true;
      if (this.client === client) {
        this.client = null;
        if (this.pingTimer) clearInterval(this.pingTimer);
        this.pingTimer = null;
      }
      client.end().catch(() => undefined);
      if (this.stopped) return;
      this.hooks.error(err);
      this.failures++;
      this.reconnectTimer = setTimeout(() => void this.connect(), backoffDelay(this.failures, this.backoff));
    };
    client.on('error', (err) => drop(err));
    client.on('end', () => drop(new Error('the LISTEN connection ended')));
    client.on('notification', (msg) => {
      const queue = this.byChannel.get(msg.channel);
      if (queue !== undefined) this.hooks.notify(queue);
    });
    try {
      await client.connect();
      for (const channel of this.byChannel.keys()) {
        // LISTEN takes no parameters: the channel is a quoted identifier made
        // of a validated queue name ([A-Za-z0-9_.:-]).
        await client.query(`LISTEN ${client.escapeIdentifier(channel)}`);
      }
    } catch (err) {
      drop(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    if (dropped) return;
    if (this.stopped) {
      await client.end().catch(() => undefined);
      return;
    }
    this.client = client;
    this.failures = 0;
    const reconnect = this.everConnected;
    this.everConnected = true;
    this.pingTimer = setInterval(() => this.ping(client, drop), this.pingMs);
    this.hooks.connected(reconnect);
  }

  /** A silent network failure shows no error: ask the server something now and then. */
  private ping(client: Client, drop: (err: Error) => void): void {
    const timeout = setTimeout(() => drop(new Error('the LISTEN connection did not answer a ping')), Math.max(5000, this.pingMs));
    client.query('SELECT 1').then(
      () => clearTimeout(timeout),
      (err: Error) => {
        clearTimeout(timeout);
        drop(err);
      },
    );
  }
}
