// Config: one form per document section (generated from the schema in /openapi.json),
// the API's dry run (POST /v1/config/validate: changes + rendered ruleset) before
// apply, apply with the version the edit started from (PUT with If-Match; a 409 shows
// the other writer's change instead of overwriting it), and a raw JSON view.
import { useEffect, useState } from "preact/hooks";
import { ApiError, Change, FieldError, call, fmtError, get } from "./api";
import { Node } from "./form";
import { Json, Schema, SchemaSet, fieldId, setAt } from "./schema";

interface Envelope {
  version: number;
  document: Record<string, Json>;
}
interface Review {
  valid: boolean;
  errors: FieldError[];
  changes?: Change[];
  nftables?: string;
}
interface VersionInfo {
  version: number;
  actor: string;
  created_at: number;
  summary: string;
}
interface Conflict {
  current: Envelope;
  info: VersionInfo | null;
  changes: Change[];
}

export function Changes({ changes, id }: { changes: Change[]; id?: string }) {
  if (!changes.length) return <p id={id}>No changes.</p>;
  return (
    <table class="changes" id={id}>
      <thead>
        <tr>
          <th scope="col">Change</th>
          <th scope="col">Field</th>
          <th scope="col">Before</th>
          <th scope="col">After</th>
        </tr>
      </thead>
      <tbody>
        {changes.map((c, i) => (
          <tr key={i} class={c.op}>
            <td>{c.op}</td>
            <td>
              <code>{c.path}</code>
            </td>
            <td>
              <code>{c.old === undefined ? "" : JSON.stringify(c.old)}</code>
            </td>
            <td>
              <code>{c.new === undefined ? "" : JSON.stringify(c.new)}</code>
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

const ACRONYMS = new Set(["ai", "api", "aws", "gwlb", "ha", "nat", "tls"]);

/** ``port_forwards`` -> "Port forwards", ``gwlb`` -> "GWLB". */
export function sectionTitle(key: string): string {
  if (ACRONYMS.has(key)) return key.toUpperCase();
  const words = key.split("_");
  return [words[0][0].toUpperCase() + words[0].slice(1), ...words.slice(1)].join(" ");
}

export function ConfigPage({ admin }: { admin: boolean }) {
  const [schemas, setSchemas] = useState<SchemaSet | null>(null);
  const [root, setRoot] = useState<Schema | null>(null);
  const [base, setBase] = useState<Envelope | null>(null);
  const [draft, setDraft] = useState<Record<string, Json> | null>(null);
  const [section, setSection] = useState("rules");
  const [errors, setErrors] = useState<FieldError[]>([]);
  const [review, setReview] = useState<Review | null>(null);
  const [conflict, setConflict] = useState<Conflict | null>(null);
  const [message, setMessage] = useState<{ text: string; ok: boolean } | null>(null);
  const [raw, setRaw] = useState(false);
  const [rawText, setRawText] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function load() {
    const env = await get<Envelope>("/v1/config");
    setBase(env);
    setDraft(structuredClone(env.document));
    setErrors([]);
    setReview(null);
    setConflict(null);
    setRawText(null);
  }
  useEffect(() => {
    get<{ components: { schemas: Record<string, Schema> } }>("/openapi.json").then((o) => {
      const set = new SchemaSet(o.components.schemas);
      setSchemas(set);
      setRoot(set.resolve(o.components.schemas.ConfigDocument));
    });
    load().catch((e) => setMessage({ text: fmtError(e), ok: false }));
  }, []);

  if (!schemas || !root || !base || !draft) return <p class="loading">Loading the document…</p>;
  const sections = Object.keys(root.properties ?? {}).filter((k) => k !== "schema_version");
  const editable = admin;
  const ctx = {
    schemas,
    errors,
    editable,
    set: (loc: (string | number)[], value: Json | undefined) => {
      setDraft((d) => setAt(d, loc, value) as Record<string, Json>);
      setReview(null);
    },
  };

  function fail(e: unknown, what: string) {
    if (e instanceof ApiError && e.fieldErrors.length) {
      setErrors(e.fieldErrors);
      const first = e.fieldErrors[0].path.split(/[.[]/)[0];
      if (sections.includes(first)) setSection(first);
      setMessage({ text: `${what}: ${e.message}; nothing was applied. See the fields marked below.`, ok: false });
    } else setMessage({ text: `${what}: ${fmtError(e)}`, ok: false });
  }

  async function dryRun() {
    setBusy(true);
    try {
      const { data } = await call<Review>("POST", "/v1/config/validate", { document: draft, version: base!.version });
      setReview(data);
      setErrors(data.errors);
      if (data.valid) setMessage({ text: `valid: ${data.changes?.length ?? 0} changes against version ${base!.version}`, ok: true });
      else fail(new ApiError(422, "invalid_document", "invalid config document", { errors: data.errors }), "dry run");
    } catch (e) {
      fail(e, "dry run");
    } finally {
      setBusy(false);
    }
  }

  async function apply() {
    setBusy(true);
    try {
      const { data } = await call<{ version: number; changes: Change[] }>(
        "PUT",
        "/v1/config",
        { document: draft },
        { "If-Match": `"${base!.version}"` },
      );
      await load();
      setMessage({ text: `applied as version ${data.version} (${data.changes.length} changes)`, ok: true });
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) {
        const current = await get<Envelope>("/v1/config");
        const info = (await get<{ versions: VersionInfo[] }>("/v1/config/versions?limit=1")).versions[0] ?? null;
        const diff = await call<Review>("POST", "/v1/config/validate", { document: current.document, version: base!.version });
        setConflict({ current, info, changes: diff.data.changes ?? [] });
        setMessage({ text: `not applied: ${e.message}`, ok: false });
      } else fail(e, "apply");
    } finally {
      setBusy(false);
    }
  }

  const unplaced = errors.filter((e) => !e.path.startsWith(section));
  return (
    <section aria-labelledby="config-h">
      <h1 id="config-h">
        Config <span id="docversion">(version {base.version})</span>
      </h1>
      {!editable && (
        <p class="note" id="readonly-note">
          Your token is read-only: you can look and dry-run, not change.
        </p>
      )}
      {message && (
        <p id="message" class={message.ok ? "good" : "bad"} role="status">
          {message.text}
        </p>
      )}
      {conflict && (
        <div class="conflict" id="conflict" role="alert">
          <h2>Someone else changed the config</h2>
          <p>
            Version {conflict.current.version} was written
            {conflict.info && ` by ${conflict.info.actor} at ${new Date(conflict.info.created_at * 1000).toLocaleString()}`} after
            you started from version {base.version}. Their change:
          </p>
          <Changes changes={conflict.changes} id="conflict-changes" />
          <p>Your edits were not applied and are still here.</p>
          <button type="button" id="discard" onClick={() => load()}>
            Discard my edits, load version {conflict.current.version}
          </button>
          <button
            type="button"
            id="rebase"
            onClick={() => {
              setBase(conflict.current);
              setConflict(null);
              setMessage({ text: `your edits now start from version ${conflict.current.version}: review them before applying`, ok: true });
            }}
          >
            Keep my edits over version {conflict.current.version}
          </button>
        </div>
      )}
      {unplaced.length > 0 && (
        <div class="error-summary" role="alert">
          <p>Errors in other sections:</p>
          <ul>
            {unplaced.map((e) => (
              <li key={e.path}>
                <button type="button" class="link" onClick={() => setSection(e.path.split(/[.[]/)[0])}>
                  {e.path}
                </button>
                : {e.message}
              </li>
            ))}
          </ul>
        </div>
      )}
      <div class="config-layout">
        <nav aria-label="Config sections" class="sections">
          <ul>
            {sections.map((k) => (
              <li key={k}>
                <button
                  type="button"
                  id={`section-${k}`}
                  aria-current={!raw && k === section ? "true" : undefined}
                  onClick={() => {
                    setSection(k);
                    setRaw(false);
                  }}
                  class={errors.some((e) => e.path.startsWith(k)) ? "has-error" : ""}
                >
                  {sectionTitle(k)}
                </button>
              </li>
            ))}
            <li>
              <button type="button" id="section-raw" aria-current={raw ? "true" : undefined} onClick={() => setRaw(true)}>
                Raw JSON
              </button>
            </li>
          </ul>
        </nav>
        <form
          class="section-form"
          aria-label={raw ? "Raw JSON document" : `Section ${section}`}
          onSubmit={(e) => {
            e.preventDefault();
            dryRun();
          }}
        >
          <div class="actions">
            <button type="submit" id="review" disabled={busy}>
              Review changes (dry run)
            </button>
            {editable && (
              <>
                <button type="button" id="apply" class="primary" disabled={busy} onClick={apply}>
                  Apply (based on version {base.version})
                </button>
                <button type="button" id="reset" disabled={busy} onClick={() => load()}>
                  Discard edits
                </button>
              </>
            )}
          </div>
          {raw ? (
            <div class="field">
              <label for="raw">The whole document (JSON; secrets masked, sending the mask keeps them)</label>
              <textarea
                id="raw"
                rows={28}
                readOnly={!editable}
                value={rawText ?? JSON.stringify(draft, null, 2)}
                onInput={(e) => {
                  const t = (e.target as HTMLTextAreaElement).value;
                  setRawText(t);
                  try {
                    setDraft(JSON.parse(t));
                    setReview(null);
                  } catch {
                    /* keep the last parsed draft until the text is JSON again */
                  }
                }}
              />
            </div>
          ) : (
            <>
              <h2 id={fieldId(section)}>{sectionTitle(section)}</h2>
              <Node loc={[section]} schema={root.properties![section]} value={draft[section]} ctx={ctx} name={section} />
            </>
          )}
        </form>
      </div>
      {review?.valid && (
        <div class="review" id="review-result">
          <h2>Changes against version {base.version}</h2>
          <Changes changes={review.changes ?? []} id="review-changes" />
          <details>
            <summary>Rendered nftables ruleset</summary>
            <pre id="ruleset">{review.nftables}</pre>
          </details>
        </div>
      )}
    </section>
  );
}
