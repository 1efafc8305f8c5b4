import { readFileSync } from 'node:fs';
import { join } from 'node:path';

function readVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

/** The package's name, as reported in worker heartbeats and spans. */
export const LIBRARY_NAME = '@queue/client';

/** The package's version (from its package.json), as reported in worker heartbeats and spans. */
export const VERSION: string = readVersion();
