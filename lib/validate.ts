import { Code, ConnectError } from "@connectrpc/connect";
import { isUuid } from "./ids.js";

/** Validation at the edge of every RPC: each failure is an `InvalidArgument` naming the field. */
export function invalid(field: string, why: string): ConnectError {
  return new ConnectError(`${field}: ${why}`, Code.InvalidArgument);
}

export function requireUuid(field: string, value: string): string {
  if (!isUuid(value)) throw invalid(field, "must be a lower-case UUID");
  return value;
}

/** Length in Unicode code points, as users count characters. */
export function codePoints(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

export function requireText(field: string, value: string, min: number, max: number): string {
  // Cheap bound first: a string of more than 2*max UTF-16 units has more than max code points.
  const n = value.length > 2 * max ? max + 1 : codePoints(value);
  if (n < min) throw invalid(field, min === 1 ? "must not be empty" : `must have at least ${min} characters`);
  if (n > max) throw invalid(field, `must have at most ${max} characters`);
  return value;
}

/** A page size: 0 means `def`; anything above `max` is an error, not silently clamped. */
export function pageLimit(field: string, value: number, def: number, max: number): number {
  if (value === 0) return def;
  if (value < 0 || value > max) throw invalid(field, `must be between 1 and ${max}`);
  return value;
}
