// Overview: per AZ and instance, health, role, versions, data-plane mode, services, and
// charts of the API's status history (GET /v1/status/history), refreshed every few
// seconds without a reload; a time range selects how far back the charts look.
import { useEffect, useRef, useState } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { fmtError, get } from "./api";

const REFRESH_MS = 3000;
const RANGES = [
  { seconds: 60, label: "1 minute" },
  { seconds: 300, label: "5 minutes" },
  { seconds: 900, label: "15 minutes" },
  { seconds: 1800, label: "30 minutes" },
];
const COLORS = ["#1f5fbf", "#b3261e", "#1b7f3b", "#8a4fbf", "#b35c00", "#00707a"];

interface Point {
  packets: number;
  bytes: number;
  fast_packets: number;
  fast_bytes: number;
  drops: Record<string, number>;
  links?: Record<string, Record<string, number>>;
  conntrack_count: number | null;
  conntrack_max: number | null;
  conntrack_insert_failed: number | null;
  nat_ports_busiest: number | null;
  applied_version: number | null;
  converged: boolean;
  role: string | null;
}
interface Sample {
  t: number;
  instances: Record<string, Point>;
}
interface History {
  interval_seconds: number;
  window_seconds: number;
  samples: Sample[];
}
type Dict = Record<string, any>;
interface Status {
  desired_version: number;
  instances: Record<string, Dict>;
}

/** Per-second rate of ``pick`` between consecutive samples; a reset is a gap. */
function rates(samples: Sample[], name: string, pick: (p: Point) => number): (number | null)[] {
  const out: (number | null)[] = [];
  for (let i = 0; i < samples.length; i++) {
    const a = samples[i - 1]?.instances[name];
    const b = samples[i].instances[name];
    if (!a || !b) {
      out.push(null);
      continue;
    }
    const dt = samples[i].t - samples[i - 1].t;
    const d = pick(b) - pick(a);
    out.push(dt > 0 && d >= 0 ? d / dt : null);
  }
  return out;
}

export interface Series {
  label: string;
  values: (number | null)[];
}

export function Chart({
  id,
  title,
  unit,
  times,
  series,
  fmt = human,
}: {
  id: string;
  title: string;
  unit: string;
  times: number[];
  series: Series[];
  fmt?: (x: number) => string;
}) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const shape = series.map((s) => s.label).join("|");
  useEffect(() => {
    if (!box.current) return;
    const opts: uPlot.Options = {
      width: Math.max(320, box.current.clientWidth || 560),
      height: 200,
      series: [
        {},
        ...series.map((s, i) => ({ label: s.label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false })),
      ],
      axes: [{}, { size: 100, values: (_u: uPlot, v: number[]) => v.map((x) => fmt(x) + unit) }],
      legend: { show: true },
    };
    plot.current?.destroy();
    plot.current = new uPlot(opts, [times, ...series.map((s) => s.values)] as uPlot.AlignedData, box.current);
    return () => {
      plot.current?.destroy();
      plot.current = null;
    };
  }, [shape]);
  useEffect(() => {
    plot.current?.setData([times, ...series.map((s) => s.values)] as uPlot.AlignedData);
  });
  const latest = series.map((s) => `${s.label}: ${fmt(s.values[s.values.length - 1] ?? 0)}${unit}`).join(", ");
  return (
    <figure
      class="chart"
      id={id}
      data-points={times.length}
      data-latest={JSON.stringify(series.map((s) => s.values[s.values.length - 1] ?? null))}
      data-peak={JSON.stringify(series.map((s) => Math.max(0, ...s.values.map((v) => v ?? 0))))}
    >
      <figcaption>{title}</figcaption>
      <div ref={box} role="img" aria-label={`${title}; latest ${latest || "no data yet"}`} />
    </figure>
  );
}

export function human(x: number): string {
  const a = Math.abs(x);
  if (a >= 1e9) return (x / 1e9).toFixed(1) + " G";
  if (a >= 1e6) return (x / 1e6).toFixed(1) + " M";
  if (a >= 1e3) return (x / 1e3).toFixed(1) + " k";
  return (Number.isInteger(x) ? x.toString() : x.toFixed(1)) + " ";
}

/** The services the instance reports as on (a section's status with enabled: true,
 * an inspection engine, a load balancer with listeners, flow logs being written). */
function services(s: Dict): string[] {
  const out: string[] = [];
  const enabled = (d: unknown) => !!d && typeof d === "object" && (d as Dict).enabled === true;
  if (s.inspection?.engine) out.push(`inspection (${s.inspection.engine})`);
  if (enabled(s.proxy)) out.push("proxy (Squid)");
  if (enabled(s.tls)) out.push("TLS (HAProxy)");
  if (Object.keys(s.load_balancer?.listeners ?? {}).length > 0) out.push("load balancer");
  if (enabled(s.gwlb)) out.push("GWLB");
  if (enabled(s.conntrack_sync)) out.push("conntrack sync");
  if (s.traffic_logs && Object.keys(s.traffic_logs).length > 0) out.push("flow/firewall logs");
  return out;
}

interface LeaseEvent {
  kind: string;
  key: string;
  holder: string;
  previous: string | null;
  token: number;
  at: number;
  reason: string;
}
const EVENT_LABELS: Record<string, string> = {
  acquired: "lease acquired",
  took_over: "took over (routes, NAT address)",
  took_back: "took back (preferred leader)",
  released: "lease released",
  lost: "lease lost",
  resumed: "lease resumed",
  fallback_took: "took another AZ's routes (cross-AZ fallback)",
  fallback_returned: "returned another AZ's routes",
  takeover_failed: "takeover failed (retried)",
  takeover_recovered: "takeover completed after a failure",
};
const EVENT_BAD = new Set(["lost", "takeover_failed"]);
const EVENTS_SHOWN = 30;

/** The lease events every instance reports in its status (aws.lease.events), the same
 * event seen twice once, newest first. */
function events(status: Status | null): LeaseEvent[] {
  const seen = new Map<string, LeaseEvent>();
  for (const s of Object.values(status?.instances ?? {})) {
    for (const e of (s.aws?.lease?.events ?? []) as LeaseEvent[]) seen.set(`${e.at}|${e.holder}|${e.kind}|${e.token}`, e);
  }
  return [...seen.values()].sort((a, b) => b.at - a.at).slice(0, EVENTS_SHOWN);
}

export function Overview() {
  const [status, setStatus] = useState<Status | null>(null);
  const [samples, setSamples] = useState<Sample[]>([]);
  const [range, setRange] = useState(300);
  const [error, setError] = useState<string | null>(null);
  const last = useRef(0);

  useEffect(() => {
    let stop = false;
    async function tick() {
      try {
        const [st, hist] = await Promise.all([
          get<Status>("/v1/status"),
          get<History>(`/v1/status/history?since=${last.current}`),
        ]);
        if (stop) return;
        setStatus(st);
        if (hist.samples.length) {
          last.current = hist.samples[hist.samples.length - 1].t;
          setSamples((old) => [...old, ...hist.samples].slice(-2000));
        }
        setError(null);
      } catch (e) {
        if (!stop) setError(fmtError(e));
      }
    }
    tick();
    const timer = setInterval(tick, REFRESH_MS);
    return () => {
      stop = true;
      clearInterval(timer);
    };
  }, []);

  const newest = samples.length ? samples[samples.length - 1].t : 0;
  const shown = samples.filter((s) => s.t >= newest - range);
  const times = shown.map((s) => s.t);
  const names = Object.keys(status?.instances ?? {}).sort();
  const byAz = new Map<string, string[]>();
  for (const n of names) {
    const st = status!.instances[n];
    const az = st.aws?.availability_zone ?? st.aws?.instance?.availability_zone ?? "local";
    byAz.set(az, [...(byAz.get(az) ?? []), n]);
  }
  const per = (label: string, pick: (p: Point) => number, scale = 1): Series[] =>
    names.map((n) => ({ label: `${n} ${label}`, values: rates(shown, n, pick).map((v) => (v === null ? null : v * scale)) }));
  // direction from the interfaces: received on inside = outbound, on outside = inbound
  const roles = [...new Set(shown.flatMap((s) => Object.values(s.instances).flatMap((p) => Object.keys(p.links ?? {}))))].sort();
  const direction: Record<string, string> = { inside: "out (rx inside)", outside: "in (rx outside)" };
  const byLink = (key: "rx_packets" | "rx_bytes", scale: number): Series[] =>
    names.flatMap((n) =>
      roles.map((r) => ({
        label: `${n} ${direction[r] ?? r}`,
        values: rates(shown, n, (p) => p.links?.[r]?.[key] ?? NaN).map((v) => (v === null || Number.isNaN(v) ? null : v * scale)),
      })),
    );
  const reasons = [...new Set(shown.flatMap((s) => Object.values(s.instances).flatMap((p) => Object.keys(p.drops))))].sort();
  const leaseEvents = events(status);
  const failovers: { t: number; name: string; from: string | null; to: string | null }[] = [];
  for (let i = 1; i < samples.length; i++) {
    for (const n of names) {
      const a = samples[i - 1].instances[n]?.role ?? null;
      const b = samples[i].instances[n]?.role ?? null;
      if (a !== b && (a || b)) failovers.push({ t: samples[i].t, name: n, from: a, to: b });
    }
  }

  return (
    <section aria-labelledby="overview-h">
      <h1 id="overview-h">Overview</h1>
      {error && <p class="error" role="alert">{error}</p>}
      <p>
        Desired config version: <strong id="desired">{status?.desired_version ?? "…"}</strong>
      </p>
      {[...byAz.entries()].map(([az, members]) => (
        <table class="instances" key={az} aria-label={`Instances in ${az}`}>
          <caption>Availability zone {az}</caption>
          <thead>
            <tr>
              <th scope="col">Instance</th>
              <th scope="col">Health</th>
              <th scope="col">Role</th>
              <th scope="col">Applied version</th>
              <th scope="col">Data plane</th>
              <th scope="col">Services</th>
              <th scope="col">Conntrack</th>
              <th scope="col">NAT ports (busiest)</th>
            </tr>
          </thead>
          <tbody>
            {members.map((n) => {
              const s = status!.instances[n];
              const healthy = s.agent_running && s.converged && !s.last_error;
              const modes = Object.entries((s.xdp_modes ?? {}) as Record<string, string>).map(([i, m]) => `${i} ${m}`).join(", ");
              const ct = s.conntrack ?? {};
              return (
                <tr key={n} data-instance={n}>
                  <th scope="row">{n}</th>
                  <td class={healthy ? "ok" : "bad"}>
                    {healthy ? "healthy" : s.agent_running ? (s.last_error ? `error: ${s.last_error}` : "converging") : "agent down"}
                    {Object.keys(s.section_errors ?? {}).length > 0 && ` (${Object.keys(s.section_errors).length} section errors)`}
                  </td>
                  <td>{s.aws?.role ?? "standalone"}</td>
                  <td>
                    {s.applied_version}
                    {s.in_sync ? "" : " (not in sync)"}
                  </td>
                  <td>
                    {s.data_plane}
                    {modes && ` (${modes})`}
                  </td>
                  <td>{services(s).join(", ") || "none"}</td>
                  <td>
                    {ct.count ?? "?"} / {ct.max ?? "?"}
                    {ct.insert_failed ? `, ${ct.insert_failed} insert failures` : ""}
                  </td>
                  <td>{s.offload?.nat_ports_busiest ?? "—"}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      ))}
      <div class="toolbar">
        <label for="range">Time range</label>
        <select id="range" value={range} onChange={(e) => setRange(Number((e.target as HTMLSelectElement).value))}>
          {RANGES.map((r) => (
            <option value={r.seconds} key={r.seconds}>
              last {r.label}
            </option>
          ))}
        </select>
        <span class="hint">refreshes every {REFRESH_MS / 1000} s; the API keeps a bounded in-memory window</span>
      </div>
      <div class="charts">
        {roles.length > 0 && (
          <>
            <Chart id="chart-pps-dir" title="Packets per second in and out" unit="pps" times={times} series={byLink("rx_packets", 1)} />
            <Chart id="chart-bps-dir" title="Bit rate in and out" unit="bit/s" times={times} series={byLink("rx_bytes", 8)} />
          </>
        )}
        <Chart id="chart-pps" title="Packets per second (XDP, both interfaces)" unit="pps" times={times} series={per("all", (p) => p.packets)} />
        <Chart id="chart-bps" title="Bit rate (XDP, both interfaces)" unit="bit/s" times={times} series={per("all", (p) => p.bytes, 8)} />
        <Chart
          id="chart-fast"
          title="Fast-path share of packets"
          unit="%"
          times={times}
          series={names.map((n) => {
            const all = rates(shown, n, (p) => p.packets);
            const fast = rates(shown, n, (p) => p.fast_packets);
            return { label: n, values: all.map((a, i) => (a && fast[i] !== null ? (100 * fast[i]!) / a : null)) };
          })}
        />
        <Chart
          id="chart-drops"
          title="Drops per second by reason"
          unit="pps"
          times={times}
          series={names.flatMap((n) => reasons.map((r) => ({ label: `${n} ${r}`, values: rates(shown, n, (p) => p.drops[r] ?? 0) })))}
        />
        <Chart
          id="chart-insert-failed"
          title="Conntrack insert failures per second (NAT port exhaustion shows here too)"
          unit="/s"
          times={times}
          series={per("insert failed", (p) => p.conntrack_insert_failed ?? NaN)}
        />
        <Chart
          id="chart-nat-ports"
          title="NAT ports in use (busiest destination, offloaded flows)"
          unit=""
          times={times}
          series={names.map((n) => ({ label: n, values: shown.map((s) => s.instances[n]?.nat_ports_busiest ?? null) }))}
        />
        <Chart
          id="chart-conntrack"
          title="Conntrack occupancy"
          unit="%"
          times={times}
          series={names.map((n) => ({
            label: n,
            values: shown.map((s) => {
              const p = s.instances[n];
              return p?.conntrack_count != null && p.conntrack_max ? (100 * p.conntrack_count) / p.conntrack_max : null;
            }),
          }))}
        />
      </div>
      <h2>Failovers and route changes</h2>
      {leaseEvents.length === 0 ? (
        <p id="lease-events">No leader-lease event reported by any instance.</p>
      ) : (
        <table id="lease-events">
          <caption>Leader-lease events the instances report (newest first): takeovers move the AZ's routes and NAT address</caption>
          <thead>
            <tr>
              <th scope="col">When</th>
              <th scope="col">AZ</th>
              <th scope="col">Event</th>
              <th scope="col">Instance</th>
              <th scope="col">Before</th>
              <th scope="col">Token</th>
              <th scope="col">Reason</th>
            </tr>
          </thead>
          <tbody>
            {leaseEvents.map((e) => (
              <tr key={`${e.at}-${e.holder}-${e.kind}-${e.token}`} data-event={e.kind} class={EVENT_BAD.has(e.kind) ? "bad" : undefined}>
                <td>{new Date(e.at * 1000).toLocaleTimeString()}</td>
                <td>{e.key}</td>
                <td>{EVENT_LABELS[e.kind] ?? e.kind}</td>
                <td>{e.holder}</td>
                <td>{e.previous ?? "—"}</td>
                <td>{e.token}</td>
                <td>{e.reason}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <h3>Role changes</h3>
      {failovers.length === 0 ? (
        <p id="failovers">No role change in the API's history window.</p>
      ) : (
        <ul id="failovers">
          {failovers.slice(-20).map((f) => (
            <li key={`${f.t}-${f.name}`}>
              {new Date(f.t * 1000).toLocaleTimeString()} {f.name}: {f.from ?? "none"} → {f.to ?? "none"}
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}
