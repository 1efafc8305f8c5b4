/**
 * A duration: a number of milliseconds, or a Postgres interval string such as
 * `'5 minutes'`, `'1 hour 30 minutes'` or `'00:00:10'` (checked by the server).
 */
export type Interval = number | string;

/**
 * The text of an interval parameter (sent as a bound parameter, never pasted
 * into SQL). Milliseconds become `'<n> milliseconds'`.
 *
 * @internal
 */
export function intervalToSql(value: Interval, what: string): string {
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) {
      throw new TypeError(`${what} must be a finite number of milliseconds or an interval string, got ${value}`);
    }
    return `${value} milliseconds`;
  }
  if (typeof value === 'string') {
    if (value.trim() === '') throw new TypeError(`${what} must not be an empty string`);
    return value;
  }
  throw new TypeError(`${what} must be milliseconds (number) or an interval string, got ${typeof value}`);
}
