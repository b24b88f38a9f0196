/**
 * Reading configuration from the environment: the helpers every `config.ts` uses, so
 * each service's `loadConfig(env)` is a pure function of defaults and checks.
 */
export type Env = Readonly<Record<string, string | undefined>>;

export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

/** A trimmed string, or `def` when unset or empty. */
export function envString(env: Env, name: string, def: string): string {
  const v = env[name]?.trim();
  return v === undefined || v === "" ? def : v;
}

/** A whole number in [min, max], or `def` when unset or empty. */
export function envInt(env: Env, name: string, def: number, min: number, max: number): number {
  const raw = env[name]?.trim();
  if (raw === undefined || raw === "") return def;
  if (!/^\d+$/.test(raw)) throw new ConfigError(`${name}: must be an integer, got "${raw}"`);
  const n = Number(raw);
  if (n < min || n > max) throw new ConfigError(`${name}: must be between ${min} and ${max}, got ${n}`);
  return n;
}

/** A TCP port; 0 picks a free one. */
export function envPort(env: Env, name: string, def: number): number {
  return envInt(env, name, def, 0, 65535);
}
