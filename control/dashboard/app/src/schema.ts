// A small reader of the config document's JSON Schema as /openapi.json serves it
// (pydantic's JSON Schema 2020-12 under components.schemas): resolves $ref and nullable
// unions and says which widget a node gets.

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
export interface Schema {
  $ref?: string;
  type?: string | string[];
  title?: string;
  description?: string;
  enum?: Json[];
  const?: Json;
  default?: Json;
  properties?: Record<string, Schema>;
  required?: string[];
  items?: Schema;
  prefixItems?: Schema[];
  anyOf?: Schema[];
  oneOf?: Schema[];
  allOf?: Schema[];
  additionalProperties?: boolean | Schema;
  patternProperties?: Record<string, Schema>;
  minimum?: number;
  maximum?: number;
  format?: string;
}

export type Kind = "object" | "list" | "scalars" | "enum" | "boolean" | "number" | "string" | "const" | "json";

export class SchemaSet {
  constructor(private readonly defs: Record<string, Schema>) {}

  resolve(s: Schema): Schema {
    let cur = s;
    for (let i = 0; i < 20; i++) {
      if (cur.$ref) {
        const name = cur.$ref.split("/").pop()!;
        const { $ref: _ref, ...rest } = cur;
        cur = { ...this.defs[name], ...rest };
      } else if (cur.allOf?.length === 1) {
        const { allOf, ...rest } = cur;
        cur = { ...allOf[0], ...rest };
      } else break;
    }
    return cur;
  }

  /** ``X | null`` unions: the X, and whether null is allowed. */
  unwrap(s: Schema): { schema: Schema; nullable: boolean } {
    const r = this.resolve(s);
    const alts = r.anyOf ?? r.oneOf;
    if (alts) {
      const real = alts.filter((a) => a.type !== "null");
      if (real.length === 1 && real.length < alts.length) {
        const { anyOf: _a, oneOf: _o, ...rest } = r;
        return { schema: { ...this.resolve(real[0]), ...rest }, nullable: true };
      }
    }
    return { schema: r, nullable: false };
  }

  kind(s: Schema): Kind {
    if (s.const !== undefined) return "const";
    if (s.enum) return "enum";
    const t = Array.isArray(s.type) ? s.type.filter((x) => x !== "null") : [s.type];
    if (t.length !== 1 || s.anyOf || s.oneOf) return "json";
    switch (t[0]) {
      case "object":
        return s.properties && !s.patternProperties && !(typeof s.additionalProperties === "object") ? "object" : "json";
      case "array": {
        if (s.prefixItems || !s.items) return "json";
        const item = this.unwrap(s.items).schema;
        const k = this.kind(item);
        if (k === "object") return "list";
        if (k === "string" || k === "number" || k === "enum") return "scalars";
        return "json";
      }
      case "boolean":
        return "boolean";
      case "integer":
      case "number":
        return "number";
      case "string":
        return "string";
      default:
        return "json";
    }
  }
}

/** ``["rules", "entries", 0, "dst"]`` -> ``rules.entries[0].dst``, as the API names fields. */
export function formatPath(loc: (string | number)[]): string {
  let out = "";
  for (const p of loc) out += typeof p === "number" ? `[${p}]` : out ? `.${p}` : p;
  return out || "(document)";
}

export function fieldId(path: string): string {
  return "f-" + path.replace(/[^A-Za-z0-9]+/g, "_");
}

export function setAt(doc: Json, loc: (string | number)[], value: Json | undefined): Json {
  if (loc.length === 0) return value ?? null;
  const [head, ...rest] = loc;
  if (typeof head === "number") {
    const arr = Array.isArray(doc) ? [...doc] : [];
    arr[head] = setAt(arr[head] ?? null, rest, value) as Json;
    return arr;
  }
  const obj = doc && typeof doc === "object" && !Array.isArray(doc) ? { ...doc } : {};
  if (value === undefined && rest.length === 0) delete obj[head];
  else obj[head] = setAt(obj[head] ?? null, rest, value);
  return obj;
}
