/**
 * fastToBinary writes exactly what protobuf-es's toBinary writes, for every message type
 * of gen/ (and the well-known types they use), on random messages: every scalar type at
 * its edges (negative and 64-bit values, non-ASCII and empty strings, -0 and NaN), enums
 * (also unknown numbers), nested and repeated messages, packed lists, oneofs, explicit
 * presence and unknown fields.
 */
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { create, createFileRegistry, fromBinary, toBinary, ScalarType, type DescField, type DescMessage } from "@bufbuild/protobuf";
import { FieldDescriptorProto_Label, FieldDescriptorProto_Type, FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { fastToBinary } from "../fast-binary.js";

const GEN = new URL("../../gen", import.meta.url).pathname;

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(join(dir, e.name)) : e.name.endsWith("_pb.ts") ? [join(dir, e.name)] : [],
  );
}

/** Every message type of gen/, nested ones and the well-known types they refer to included. */
async function allMessages(): Promise<DescMessage[]> {
  const found = new Map<string, DescMessage>();
  const add = (d: DescMessage) => {
    if (found.has(d.typeName)) return;
    found.set(d.typeName, d);
    for (const n of d.nestedMessages) add(n);
    for (const f of d.fields) if (f.message) add(f.message);
  };
  for (const file of files(GEN)) {
    for (const v of Object.values(await import(file))) {
      if (v && typeof v === "object" && (v as { kind?: string }).kind === "message") add(v as DescMessage);
    }
  }
  return [...found.values()];
}

/** A small deterministic PRNG (tests are reproducible). */
function prng(seed: number) {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  return { next, int, pick };
}
type Rand = ReturnType<typeof prng>;

const STRINGS = ["", "a", "hello", "héllo wörld", "日本語のテキスト", "emoji 🎉🙂", "x".repeat(200), "\u0000nul"];

function scalarValue(r: Rand, t: ScalarType): unknown {
  switch (t) {
    case ScalarType.STRING:
      return r.pick(STRINGS);
    case ScalarType.BYTES:
      return Uint8Array.from({ length: r.pick([0, 1, 3, 200]) }, () => r.int(256));
    case ScalarType.BOOL:
      return r.next() < 0.5;
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return r.pick([0, 1, -1, 127, 128, -129, 2147483647, -2147483648, r.int(1 << 30) - (1 << 29)]);
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return r.pick([0, 1, 127, 128, 16384, 4294967295, r.int(2 ** 32)]);
    case ScalarType.FLOAT:
      return r.pick([0, -0, 1.5, -2.25, 3.4e38, Number.NaN, Infinity]);
    case ScalarType.DOUBLE:
      return r.pick([0, -0, 1.5, -1e-300, 1.7976931348623157e308, Number.NaN, -Infinity]);
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return r.pick([0n, 1n, -1n, 2n ** 53n + 1n, -(2n ** 63n), 2n ** 63n - 1n, 4294967296n, BigInt(r.int(1e9))]);
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return r.pick([0n, 1n, 127n, 128n, 2n ** 32n, 2n ** 64n - 1n, 2n ** 53n + 7n, BigInt(r.int(1e9))]);
  }
  return undefined;
}

function fieldValue(r: Rand, f: DescField, depth: number): unknown {
  switch (f.fieldKind) {
    case "scalar":
      return scalarValue(r, f.scalar);
    case "enum":
      return r.next() < 0.8 ? r.pick(f.enum.values).number : 99;
    case "message":
      return randomInit(r, f.message, depth + 1);
    case "list": {
      const n = r.pick([0, 1, 2, 5]);
      return Array.from({ length: n }, () =>
        f.listKind === "message" ? randomInit(r, f.message, depth + 1) : f.listKind === "enum" ? r.pick(f.enum.values).number : scalarValue(r, f.scalar),
      );
    }
    case "map": {
      const out: Record<string, unknown> = {};
      for (let i = 0; i < r.int(3); i++) {
        const key = String(scalarValue(r, f.mapKey));
        out[key] = f.mapKind === "message" ? randomInit(r, f.message, depth + 1) : f.mapKind === "enum" ? r.pick(f.enum.values).number : scalarValue(r, f.scalar);
      }
      return out;
    }
  }
}

/** An init object with a random subset of the fields set (each oneof: one member or none). */
function randomInit(r: Rand, desc: DescMessage, depth = 0): Record<string, unknown> {
  const init: Record<string, unknown> = {};
  if (depth > 3) return init;
  for (const f of desc.fields) {
    if (f.oneof || r.next() < 0.3) continue;
    init[f.localName] = fieldValue(r, f, depth);
  }
  for (const o of desc.oneofs) {
    if (r.next() < 0.3) continue;
    const f = r.pick(o.fields);
    init[o.localName] = { case: f.localName, value: fieldValue(r, f, depth) };
  }
  return init;
}

/**
 * A proto3 message with every scalar type (Parley's own protos use few of them): singular,
 * `optional`, packed and unpacked repeated, in a oneof, plus an enum and a nested message.
 */
function allTypesMessage(): DescMessage {
  const T = FieldDescriptorProto_Type;
  const L = FieldDescriptorProto_Label;
  const scalars: [string, FieldDescriptorProto_Type][] = [
    ["double", T.DOUBLE], ["float", T.FLOAT], ["int64", T.INT64], ["uint64", T.UINT64], ["int32", T.INT32],
    ["fixed64", T.FIXED64], ["fixed32", T.FIXED32], ["bool", T.BOOL], ["string", T.STRING], ["bytes", T.BYTES],
    ["uint32", T.UINT32], ["sfixed32", T.SFIXED32], ["sfixed64", T.SFIXED64], ["sint32", T.SINT32], ["sint64", T.SINT64],
  ];
  const field: object[] = [];
  const oneofDecl: object[] = [{ name: "choice" }];
  let n = 1;
  for (const [name, type] of scalars) {
    field.push({ name: `s_${name}`, number: n++, type, label: L.OPTIONAL, jsonName: `s${name}` });
    // proto3 `optional`: explicit presence through a synthetic oneof.
    oneofDecl.push({ name: `_o_${name}` });
    field.push({ name: `o_${name}`, number: n++, type, label: L.OPTIONAL, proto3Optional: true, oneofIndex: oneofDecl.length - 1 });
    field.push({ name: `c_${name}`, number: n++, type, label: L.OPTIONAL, oneofIndex: 0 });
    field.push({ name: `r_${name}`, number: n++, type, label: L.REPEATED });
    if (type !== T.STRING && type !== T.BYTES) field.push({ name: `u_${name}`, number: n++, type, label: L.REPEATED, options: { packed: false } });
  }
  field.push({ name: "e", number: n++, type: T.ENUM, typeName: ".fastbinary.test.Color", label: L.OPTIONAL });
  field.push({ name: "re", number: n++, type: T.ENUM, typeName: ".fastbinary.test.Color", label: L.REPEATED });
  field.push({ name: "child", number: n++, type: T.MESSAGE, typeName: ".fastbinary.test.AllTypes", label: L.OPTIONAL });
  field.push({ name: "children", number: n++, type: T.MESSAGE, typeName: ".fastbinary.test.AllTypes", label: L.REPEATED });
  const file = create(FileDescriptorProtoSchema, {
    name: "fastbinary/test.proto",
    package: "fastbinary.test",
    syntax: "proto3",
    enumType: [{ name: "Color", value: [{ name: "COLOR_UNSPECIFIED", number: 0 }, { name: "COLOR_RED", number: 1 }, { name: "COLOR_BLUE", number: -3 }] }],
    messageType: [{ name: "AllTypes", field, oneofDecl }],
  });
  return createFileRegistry(file, () => undefined).getMessage("fastbinary.test.AllTypes")!;
}

/** A proto2 message: unset optional fields read their defaults (from the prototype) but are not written. */
function proto2Message(): DescMessage {
  const T = FieldDescriptorProto_Type;
  const L = FieldDescriptorProto_Label;
  const file = create(FileDescriptorProtoSchema, {
    name: "fastbinary/legacy.proto",
    package: "fastbinary.legacy",
    syntax: "proto2",
    messageType: [
      {
        name: "Legacy",
        field: [
          { name: "count", number: 1, type: T.INT32, label: L.OPTIONAL, defaultValue: "5" },
          { name: "label", number: 2, type: T.STRING, label: L.OPTIONAL, defaultValue: "none" },
          { name: "big", number: 3, type: T.UINT64, label: L.OPTIONAL },
          { name: "tags", number: 4, type: T.SINT32, label: L.REPEATED },
        ],
      },
    ],
  });
  return createFileRegistry(file, () => undefined).getMessage("fastbinary.legacy.Legacy")!;
}

describe("fastToBinary", async () => {
  const messages = [...(await allMessages()), proto2Message(), allTypesMessage()];

  it(`finds the message types of gen/ and the every-scalar test type (${messages.length})`, () => {
    assert.ok(messages.length > 100, `${messages.length} types`);
    const all = messages.at(-1)!;
    assert.equal(all.typeName, "fastbinary.test.AllTypes");
    assert.ok(all.fields.some((f) => f.fieldKind === "list" && !f.packed) && all.fields.some((f) => f.fieldKind === "list" && f.packed));
  });

  it("writes the same bytes as toBinary for 60 random messages of every type", () => {
    for (const desc of messages) {
      const r = prng(desc.typeName.length * 7919 + desc.fields.length);
      for (let i = 0; i < (desc.typeName === "fastbinary.test.AllTypes" ? 3000 : 60); i++) {
        const init = randomInit(r, desc);
        const msg = create(desc, init);
        const expected = toBinary(desc, msg);
        const actual = fastToBinary(desc, msg);
        assert.deepEqual(Buffer.from(actual), Buffer.from(expected), `${desc.typeName} #${i}`);
        assert.ok(actual instanceof Uint8Array && !Buffer.isBuffer(actual), "a plain Uint8Array");
        assert.deepEqual(Buffer.from(fastToBinary(desc, init as never)), Buffer.from(expected), `${desc.typeName} #${i} from its init object`);
      }
    }
  });

  it("proto2: an unset field with a default is not written; a set one is, even at its default", () => {
    const legacy = messages.find((d) => d.typeName === "fastbinary.legacy.Legacy")!;
    const unset = create(legacy);
    assert.equal((unset as unknown as { count: number }).count, 5, "reads its default");
    assert.equal(fastToBinary(legacy, unset).byteLength, 0);
    const set = create(legacy, { count: 5 } as never);
    assert.deepEqual(Buffer.from(fastToBinary(legacy, set)), Buffer.from(toBinary(legacy, set)));
    assert.equal(fastToBinary(legacy, set).byteLength, 2);
  });

  it("writes a default message as zero bytes, and unknown fields after the known ones", () => {
    for (const desc of messages) assert.equal(fastToBinary(desc, create(desc)).byteLength, toBinary(desc, create(desc)).byteLength, desc.typeName);
    // Unknown fields survive a round trip: decode bytes of a type with more fields as one with fewer.
    const wide = messages.find((d) => d.fields.length >= 3 && d.fields.every((f) => f.fieldKind === "scalar" && f.scalar === ScalarType.STRING));
    const narrow = messages.find((d) => d.fields.length === 1 && d.fields[0]!.fieldKind === "scalar" && d.fields[0]!.scalar === ScalarType.STRING && d.fields[0]!.number === 1);
    assert.ok(wide && narrow, "two string-only types to play wide and narrow");
    const init: Record<string, string> = {};
    for (const f of wide.fields) init[f.localName] = `v${f.number}`;
    const bytes = toBinary(wide, create(wide, init));
    const decoded = fromBinary(narrow, bytes);
    assert.deepEqual(Buffer.from(fastToBinary(narrow, decoded)), Buffer.from(toBinary(narrow, decoded)));
  });
});
