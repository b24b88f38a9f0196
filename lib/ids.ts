import { createHash, randomBytes } from "node:crypto";

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** True for a lower-case, hyphenated UUID (any version). */
export function isUuid(s: string): boolean {
  return s.length === 36 && UUID_RE.test(s);
}

function format(b: Uint8Array): string {
  const h = Buffer.from(b.buffer, b.byteOffset, 16).toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * Generates UUIDv7 ids (RFC 9562): 48-bit Unix milliseconds, then a 12-bit counter
 * seeded at random each millisecond (method 1 of the RFC), then random bits. Ids from
 * one generator are strictly increasing, also when the clock stalls or steps back.
 */
export class UuidV7Generator {
  private lastMs = 0;
  private counter = 0;
  private pool = randomBytes(0);
  private poolOffset = 0;

  constructor(private readonly now: () => number = Date.now) {}

  next(): string {
    let ms = this.now();
    if (ms > this.lastMs) {
      this.lastMs = ms;
      this.counter = this.random(2).readUInt16BE(0) & 0x7ff; // leave headroom to count up
    } else {
      ms = this.lastMs;
      this.counter++;
      if (this.counter > 0xfff) {
        // 4,096 ids in one millisecond: borrow the next millisecond.
        this.lastMs = ++ms;
        this.counter = 0;
      }
    }
    const b = Buffer.allocUnsafe(16);
    b.writeUIntBE(ms, 0, 6);
    b[6] = 0x70 | (this.counter >> 8);
    b[7] = this.counter & 0xff;
    this.random(8).copy(b, 8);
    b[8] = (b[8]! & 0x3f) | 0x80;
    return format(b);
  }

  private random(n: number): Buffer {
    if (this.poolOffset + n > this.pool.length) {
      this.pool = randomBytes(4096);
      this.poolOffset = 0;
    }
    const out = this.pool.subarray(this.poolOffset, this.poolOffset + n);
    this.poolOffset += n;
    return out;
  }
}

/** Milliseconds since the epoch encoded in a UUIDv7. */
export function uuidV7Time(id: string): number {
  return parseInt(id.slice(0, 8) + id.slice(9, 13), 16);
}

/** A random UUIDv4. */
export function randomUuid(): string {
  return crypto.randomUUID();
}

/**
 * The id of the 1:1 conversation of two users: a UUIDv8 (RFC 9562) over SHA-256 of
 * the two ids in sorted order, so both sides compute the same id without a lookup.
 */
export function directConversationId(userA: string, userB: string): string {
  const [lo, hi] = userA < userB ? [userA, userB] : [userB, userA];
  const b = createHash("sha256").update(`parley.direct\0${lo}\0${hi}`).digest();
  b[6] = 0x80 | (b[6]! & 0x0f);
  b[8] = 0x80 | (b[8]! & 0x3f);
  return format(b);
}
