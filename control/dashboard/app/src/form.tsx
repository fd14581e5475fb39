// The form of one config section, generated from its JSON Schema. Each field carries
// its API path (data-path, e.g. ``rules.entries[0].dst``) so the API's 422 errors are
// shown at the field they name.
import { useState } from "preact/hooks";
import { FieldError } from "./api";
import { Json, Schema, SchemaSet, fieldId, formatPath } from "./schema";

type Loc = (string | number)[];
interface Ctx {
  schemas: SchemaSet;
  errors: FieldError[];
  editable: boolean;
  set: (loc: Loc, value: Json | undefined) => void;
}

function FieldErrors({ path, errors, prefix = false }: { path: string; errors: FieldError[]; prefix?: boolean }) {
  const mine = errors.filter((e) => e.path === path || (prefix && e.path.startsWith(path)));
  if (!mine.length) return null;
  return (
    <p class="field-error" id={fieldId(path) + "-err"} data-error-for={path}>
      {mine.map((e) => (prefix && e.path !== path ? `${e.path}: ${e.message}` : e.message)).join("; ")}
    </p>
  );
}

function described(path: string, errors: FieldError[], hint: boolean, prefix = false): string | undefined {
  const ids = [];
  if (hint) ids.push(fieldId(path) + "-hint");
  if (errors.some((e) => e.path === path || (prefix && e.path.startsWith(path)))) ids.push(fieldId(path) + "-err");
  return ids.length ? ids.join(" ") : undefined;
}

function label(key: string | number, s: Schema): string {
  return typeof key === "number" ? `#${key + 1}` : s.title ?? key;
}

function parseScalar(raw: string, s: Schema): Json {
  const t = Array.isArray(s.type) ? s.type : [s.type];
  if ((t.includes("integer") || t.includes("number")) && /^-?\d+(\.\d+)?$/.test(raw.trim())) return Number(raw.trim());
  return raw;
}

function JsonField({ loc, value, ctx, title, hint }: { loc: Loc; value: Json | undefined; ctx: Ctx; title: string; hint?: string }) {
  const path = formatPath(loc);
  const [text, setText] = useState<string | null>(null);
  const [bad, setBad] = useState<string | null>(null);
  const shown = text ?? JSON.stringify(value ?? null, null, 2);
  const err = ctx.errors.some((e) => e.path.startsWith(path));
  return (
    <div class="field json">
      <label for={fieldId(path)}>{title} (JSON)</label>
      {hint && <p class="hint" id={fieldId(path) + "-hint"}>{hint}</p>}
      <textarea
        id={fieldId(path)}
        data-path={path}
        rows={Math.min(12, shown.split("\n").length + 1)}
        readOnly={!ctx.editable}
        value={shown}
        aria-invalid={err || bad ? "true" : undefined}
        aria-describedby={described(path, ctx.errors, !!hint, true)}
        onInput={(e) => {
          const raw = (e.target as HTMLTextAreaElement).value;
          setText(raw);
          try {
            ctx.set(loc, JSON.parse(raw));
            setBad(null);
          } catch (x) {
            setBad(`not JSON yet: ${(x as Error).message}`);
          }
        }}
      />
      {bad && <p class="field-error">{bad}</p>}
      <FieldErrors path={path} errors={ctx.errors} prefix />
    </div>
  );
}

export function Node({ loc, schema, value, ctx, name }: { loc: Loc; schema: Schema; value: Json | undefined; ctx: Ctx; name: string | number }) {
  const { schema: s, nullable } = ctx.schemas.unwrap(schema);
  const path = formatPath(loc);
  const id = fieldId(path);
  const kind = ctx.schemas.kind(s);
  const title = label(name, s);
  const hint = s.description?.split("\n\n")[0];
  const hintEl = hint && (
    <p class="hint" id={id + "-hint"}>
      {hint}
    </p>
  );
  const common = {
    id,
    "data-path": path,
    "aria-invalid": ctx.errors.some((e) => e.path === path) ? ("true" as const) : undefined,
    "aria-describedby": described(path, ctx.errors, !!hint),
  };
  switch (kind) {
    case "object": {
      const obj = (value && typeof value === "object" && !Array.isArray(value) ? value : {}) as Record<string, Json>;
      const body = Object.entries(s.properties!).map(([k, sub]) => (
        <Node key={k} loc={[...loc, k]} schema={sub} value={obj[k]} ctx={ctx} name={k} />
      ));
      if (loc.length <= 1) return <div class="object">{hintEl}{body}<FieldErrors path={path} errors={ctx.errors} /></div>;
      return (
        <fieldset class="object" data-path={path}>
          <legend>{title}</legend>
          {hintEl}
          {nullable && value == null ? (
            ctx.editable ? (
              <button type="button" class="add" onClick={() => ctx.set(loc, {})}>
                Set {title}
              </button>
            ) : (
              <p>not set</p>
            )
          ) : (
            body
          )}
          <FieldErrors path={path} errors={ctx.errors} />
        </fieldset>
      );
    }
    case "list": {
      const items = (Array.isArray(value) ? value : []) as Json[];
      const item = s.items!;
      return (
        <fieldset class="list" data-path={path}>
          <legend>
            {title} ({items.length})
          </legend>
          {hintEl}
          {items.map((v, i) => (
            <div class="item" key={i}>
              <Node loc={[...loc, i]} schema={item} value={v} ctx={ctx} name={i} />
              {ctx.editable && (
                <button type="button" class="remove" aria-label={`Remove ${title} #${i + 1}`} onClick={() => ctx.set(loc, items.filter((_, j) => j !== i))}>
                  Remove
                </button>
              )}
            </div>
          ))}
          {ctx.editable && (
            <button type="button" class="add" data-add={path} onClick={() => ctx.set(loc, [...items, {}])}>
              Add to {title}
            </button>
          )}
          <FieldErrors path={path} errors={ctx.errors} />
        </fieldset>
      );
    }
    case "scalars": {
      const items = (Array.isArray(value) ? value : []) as Json[];
      const itemSchema = ctx.schemas.unwrap(s.items!).schema;
      return (
        <div class="field">
          <label for={id}>{title}</label>
          {hintEl}
          <input
            {...common}
            type="text"
            readOnly={!ctx.editable}
            value={items.join(", ")}
            placeholder="comma-separated"
            onChange={(e) => {
              const parts = (e.target as HTMLInputElement).value.split(/[,\s]+/).filter(Boolean);
              ctx.set(loc, parts.map((p) => parseScalar(p, itemSchema)));
            }}
          />
          <FieldErrors path={path} errors={ctx.errors} prefix />
        </div>
      );
    }
    case "enum":
      return (
        <div class="field">
          <label for={id}>{title}</label>
          {hintEl}
          <select
            {...common}
            disabled={!ctx.editable}
            value={value == null ? "" : String(value)}
            onChange={(e) => {
              const raw = (e.target as HTMLSelectElement).value;
              ctx.set(loc, raw === "" ? undefined : (s.enum!.find((x) => String(x) === raw) ?? raw));
            }}
          >
            {(nullable || value == null) && <option value="">(not set)</option>}
            {s.enum!.map((x) => (
              <option value={String(x)} key={String(x)}>
                {String(x)}
              </option>
            ))}
          </select>
          <FieldErrors path={path} errors={ctx.errors} />
        </div>
      );
    case "boolean":
      return (
        <div class="field check">
          <input
            {...common}
            type="checkbox"
            disabled={!ctx.editable}
            checked={value === true || (value == null && s.default === true)}
            onChange={(e) => ctx.set(loc, (e.target as HTMLInputElement).checked)}
          />
          <label for={id}>{title}</label>
          {hintEl}
          <FieldErrors path={path} errors={ctx.errors} />
        </div>
      );
    case "const":
      return null;
    case "number":
    case "string":
      return (
        <div class="field">
          <label for={id}>
            {title}
            {kind === "number" && (s.minimum !== undefined || s.maximum !== undefined) && (
              <span class="range">
                {" "}
                ({s.minimum ?? "…"}–{s.maximum ?? "…"})
              </span>
            )}
          </label>
          {hintEl}
          <input
            {...common}
            type="text"
            inputMode={kind === "number" ? "numeric" : undefined}
            readOnly={!ctx.editable}
            value={value == null ? "" : String(value)}
            placeholder={s.default != null ? `default: ${String(s.default)}` : nullable ? "(not set)" : ""}
            onInput={(e) => {
              const raw = (e.target as HTMLInputElement).value;
              ctx.set(loc, raw === "" && (nullable || s.default !== undefined) ? undefined : parseScalar(raw, s));
            }}
          />
          <FieldErrors path={path} errors={ctx.errors} />
        </div>
      );
    default:
      return <JsonField loc={loc} value={value} ctx={ctx} title={title} hint={hint} />;
  }
}
