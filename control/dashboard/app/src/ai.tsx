// AI gateway: requests, tokens and cost per key and model, budget use (GET
// /v1/ai/usage), and the same over time with the overflow decisions (GET
// /v1/ai/usage/history, the API's in-memory samples); create a key (POST /v1/ai/keys,
// the key shown once) and revoke one (POST /v1/ai/keys/{id}/revoke), both config
// writes based on the current version.
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, FieldError, call, fmtError, get } from "./api";
import { Chart, Series } from "./overview";

type Meters = Record<string, number>;
interface AiSample {
  t: number;
  keys: Record<string, Record<string, Meters>>;
  overflow: Record<string, number> | null;
}
const WINDOW_S = 900; // the charts look back 15 minutes

/** Per-minute rate of ``pick`` between consecutive samples; a missing value or a reset
 * (a new state file, a restarted gateway) is a gap. */
function perMinute(samples: AiSample[], pick: (s: AiSample) => number | undefined): (number | null)[] {
  return samples.map((s, i) => {
    const a = i > 0 ? pick(samples[i - 1]) : undefined;
    const b = pick(s);
    const dt = i > 0 ? s.t - samples[i - 1].t : 0;
    return a === undefined || b === undefined || dt <= 0 || b < a ? null : ((b - a) * 60) / dt;
  });
}

const usd = (x: number) => (x === 0 ? "0 " : x.toPrecision(2) + " ");

interface Model {
  model: string;
  requests: number;
  prompt_tokens: number;
  completion_tokens: number;
  cached_tokens: number;
  cost_usd: number;
}
interface Key {
  id: string;
  tenant: string;
  revoked: boolean;
  budget: { max_tokens: number | null; max_cost_usd: number | null };
  used_tokens: number;
  used_cost_usd: number;
  models: Model[];
}
interface Gateway {
  reachable: boolean;
  error?: string;
  requests_by_cache?: Record<string, number>;
  overflow_decisions?: Record<string, number>;
  exact_hit_rate?: number | null;
  semantic_hit_rate?: number | null;
}
interface Usage {
  version: number;
  keys: Key[];
  gateway: Gateway;
}

const rate = (r: number | null | undefined) => (r == null ? "no requests yet" : `${(100 * r).toFixed(1)} %`);

function pct(used: number, max: number | null): string {
  return max ? ` (${((100 * used) / max).toFixed(1)} % of ${max})` : "";
}

export function AiPage({ admin }: { admin: boolean }) {
  const [usage, setUsage] = useState<Usage | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [id, setId] = useState("");
  const [tenant, setTenant] = useState("");
  const [maxTokens, setMaxTokens] = useState("");
  const [created, setCreated] = useState<{ id: string; key: string } | null>(null);
  const [fieldErrors, setFieldErrors] = useState<FieldError[]>([]);
  const [samples, setSamples] = useState<AiSample[]>([]);
  const last = useRef(0);

  async function load() {
    try {
      const [u, hist] = await Promise.all([
        get<Usage>("/v1/ai/usage"),
        get<{ samples: AiSample[] }>(`/v1/ai/usage/history?since=${last.current}`),
      ]);
      setUsage(u);
      if (hist.samples.length) {
        last.current = hist.samples[hist.samples.length - 1].t;
        setSamples((old) => {
          const all = [...old, ...hist.samples];
          const newest = all[all.length - 1].t;
          return all.filter((x) => x.t >= newest - WINDOW_S);
        });
      }
      setError(null);
    } catch (e) {
      setError(fmtError(e));
    }
  }
  useEffect(() => {
    load();
    const timer = setInterval(load, 5000);
    return () => clearInterval(timer);
  }, []);

  async function create(ev: Event) {
    ev.preventDefault();
    setCreated(null);
    setFieldErrors([]);
    try {
      const body: Record<string, unknown> = { id: id.trim(), tenant: tenant.trim() };
      if (maxTokens.trim()) body.budget = { max_tokens: Number(maxTokens) };
      const { data } = await call<{ id: string; key: string }>("POST", "/v1/ai/keys", body, {
        "If-Match": `"${usage!.version}"`,
      });
      setCreated({ id: data.id, key: data.key });
      setId("");
      setTenant("");
      setMaxTokens("");
      await load();
    } catch (e) {
      if (e instanceof ApiError && e.fieldErrors.length) setFieldErrors(e.fieldErrors);
      setError(fmtError(e));
    }
  }

  async function revoke(key: string) {
    try {
      await call("POST", `/v1/ai/keys/${encodeURIComponent(key)}/revoke`, undefined, { "If-Match": `"${usage!.version}"` });
      await load();
    } catch (e) {
      setError(fmtError(e));
    }
  }

  const err = (f: string) => fieldErrors.find((e) => e.path === f)?.message;
  const times = samples.map((x) => x.t);
  const pairs = [...new Set(samples.flatMap((x) => Object.entries(x.keys).flatMap(([k, ms]) => Object.keys(ms).map((m) => `${k}\u0000${m}`))))].sort();
  const perPair = (pick: (m: Meters) => number): Series[] =>
    pairs.map((p) => {
      const [k, m] = p.split("\u0000");
      const meters = (x: AiSample) => x.keys[k]?.[m];
      return { label: `${k} · ${m}`, values: perMinute(samples, (x) => (meters(x) ? pick(meters(x)!) : undefined)) };
    });
  const decisions = [...new Set(samples.flatMap((x) => Object.keys(x.overflow ?? {})))].sort();
  const overflowSeries: Series[] = decisions.map((d) => ({
    label: d,
    values: perMinute(samples, (x) => (x.overflow ? (x.overflow[d] ?? 0) : undefined)),
  }));
  const overflowTotals = Object.entries(usage?.gateway.overflow_decisions ?? {}).sort();
  return (
    <section aria-labelledby="ai-h">
      <h1 id="ai-h">AI gateway</h1>
      {error && (
        <p class="error" role="alert" id="ai-error">
          {error}
        </p>
      )}
      {created && (
        <div class="note" role="status" id="new-key">
          <p>
            Key <strong>{created.id}</strong> created. Copy it now: it is shown only this once and the appliance keeps only
            its hash.
          </p>
          <label for="new-key-value">Key</label>
          <input id="new-key-value" type="text" readOnly value={created.key} onFocus={(e) => (e.target as HTMLInputElement).select()} />
          <button type="button" onClick={() => setCreated(null)}>
            Done
          </button>
        </div>
      )}
      {usage && (
        <dl class="gateway" id="ai-gateway">
          {usage.gateway.reachable ? (
            <>
              <dt>Exact cache hit rate</dt>
              <dd id="exact-hit-rate">{rate(usage.gateway.exact_hit_rate)}</dd>
              <dt>Semantic cache hit rate</dt>
              <dd id="semantic-hit-rate">{rate(usage.gateway.semantic_hit_rate)}</dd>
              <dt>Requests by cache outcome</dt>
              <dd>
                {Object.entries(usage.gateway.requests_by_cache ?? {})
                  .map(([k, v]) => `${k}: ${v}`)
                  .join(", ") || "none"}
              </dd>
            </>
          ) : (
            <>
              <dt>Gateway</dt>
              <dd>not reachable: {usage.gateway.error}</dd>
            </>
          )}
        </dl>
      )}
      <h2>Overflow decisions</h2>
      <p class="hint">
        What the overflow policy of a local route did when its model was busy or failing: <em>queued</em> (served after
        waiting), <em>spilled</em> (re-run on the remote model), <em>rejected</em> (503, nothing left the account). Totals
        since the gateway started.
      </p>
      <table id="ai-overflow">
        <thead>
          <tr>
            <th scope="col">Policy</th>
            <th scope="col">Decision</th>
            <th scope="col">Requests</th>
          </tr>
        </thead>
        <tbody>
          {overflowTotals.length === 0 ? (
            <tr>
              <td colSpan={3}>none</td>
            </tr>
          ) : (
            overflowTotals.map(([d, n]) => (
              <tr key={d} data-decision={d}>
                <td>{d.split("/")[0]}</td>
                <td>{d.split("/")[1]}</td>
                <td>{n}</td>
              </tr>
            ))
          )}
        </tbody>
      </table>
      <h2>Usage over time</h2>
      <p class="hint">Per key and model, per minute, from the API's samples of the gateway's meters (last 15 minutes at most).</p>
      <div class="charts">
        <Chart id="chart-ai-requests" title="Requests per minute" unit="/min" times={times} series={perPair((m) => m.requests)} />
        <Chart
          id="chart-ai-tokens"
          title="Tokens per minute (in + out)"
          unit="/min"
          times={times}
          series={perPair((m) => m.prompt_tokens + m.completion_tokens)}
        />
        <Chart id="chart-ai-cost" title="Cost per minute" unit="$/min" times={times} series={perPair((m) => m.cost_usd)} fmt={usd} />
        <Chart id="chart-ai-overflow" title="Overflow decisions per minute" unit="/min" times={times} series={overflowSeries} />
      </div>
      <table id="ai-keys">
        <caption>Keys, budgets and usage (config version {usage?.version ?? "…"})</caption>
        <thead>
          <tr>
            <th scope="col">Key</th>
            <th scope="col">Tenant</th>
            <th scope="col">State</th>
            <th scope="col">Tokens used</th>
            <th scope="col">Cost (USD)</th>
            <th scope="col">Per model: requests, tokens in/out, cost</th>
            {admin && <th scope="col">Actions</th>}
          </tr>
        </thead>
        <tbody>
          {(usage?.keys ?? []).map((k) => (
            <tr key={k.id} data-key={k.id}>
              <th scope="row">{k.id}</th>
              <td>{k.tenant}</td>
              <td>{k.revoked ? "revoked" : "active"}</td>
              <td class="tokens">
                {k.used_tokens}
                {pct(k.used_tokens, k.budget.max_tokens)}
              </td>
              <td>
                {k.used_cost_usd.toFixed(6)}
                {pct(k.used_cost_usd, k.budget.max_cost_usd)}
              </td>
              <td>
                <ul class="models">
                  {k.models.map((m) => (
                    <li key={m.model} data-model={m.model}>
                      {m.model}: {m.requests} requests, {m.prompt_tokens}/{m.completion_tokens} tokens, ${m.cost_usd.toFixed(6)}
                    </li>
                  ))}
                </ul>
              </td>
              {admin && (
                <td>
                  {!k.revoked && (
                    <button type="button" onClick={() => revoke(k.id)} aria-label={`Revoke key ${k.id}`}>
                      Revoke
                    </button>
                  )}
                </td>
              )}
            </tr>
          ))}
        </tbody>
      </table>
      {admin && (
        <form onSubmit={create} class="create-key" aria-labelledby="create-key-h">
          <h2 id="create-key-h">Create a key</h2>
          {(
            [
              ["key-id", "Key id", id, setId, "id"],
              ["key-tenant", "Tenant", tenant, setTenant, "tenant"],
              ["key-max-tokens", "Token budget (optional)", maxTokens, setMaxTokens, "budget.max_tokens"],
            ] as const
          ).map(([fid, lab, val, set, path]) => (
            <div class="field" key={fid}>
              <label for={fid}>{lab}</label>
              <input
                id={fid}
                type="text"
                value={val}
                aria-invalid={err(path) ? "true" : undefined}
                aria-describedby={err(path) ? `${fid}-err` : undefined}
                onInput={(e) => set((e.target as HTMLInputElement).value)}
              />
              {err(path) && (
                <p class="field-error" id={`${fid}-err`}>
                  {err(path)}
                </p>
              )}
            </div>
          ))}
          <button type="submit" id="create-key">
            Create key
          </button>
        </form>
      )}
    </section>
  );
}
