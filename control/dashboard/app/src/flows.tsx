// Flows: top talkers and destinations from each instance's flow log, and a search by
// address (GET /v1/flows; the API reads only the newest part of each log).
import { useEffect, useState } from "preact/hooks";
import { fmtError, get } from "./api";
import { Chart, human } from "./overview";

interface Total {
  address: string;
  bytes: number;
  packets: number;
  flows: number;
}
interface PerInstance {
  records: number;
  top_sources: Total[];
  top_destinations: Total[];
  matches: number;
  newest: Record<string, unknown>[];
  per_minute: Minute[];
  bytes_read: number;
  truncated: boolean;
}
interface Minute {
  t: number;
  flows: number;
  bytes: number;
  packets: number;
}
interface Flows {
  address: string | null;
  instances: Record<string, PerInstance>;
}

function Top({ title, rows, id }: { title: string; rows: Total[]; id: string }) {
  return (
    <table id={id}>
      <caption>{title}</caption>
      <thead>
        <tr>
          <th scope="col">Address</th>
          <th scope="col">Bytes</th>
          <th scope="col">Packets</th>
          <th scope="col">Flows</th>
        </tr>
      </thead>
      <tbody>
        {rows.map((r) => (
          <tr key={r.address}>
            <th scope="row">{r.address}</th>
            <td>{human(r.bytes)}B</td>
            <td>{r.packets}</td>
            <td>{r.flows}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** Every minute from the first to the last one with records (none: 0), and each
 * minute's flows and bit rate (bytes of the flows ended in it, over 60 s). */
function timeline(minutes: Minute[]): { times: number[]; flows: number[]; bits: number[] } {
  const by = new Map(minutes.map((m) => [m.t, m]));
  const times: number[] = [];
  for (let t = minutes[0]?.t ?? 0; minutes.length && t <= minutes[minutes.length - 1].t; t += 60) times.push(t);
  return {
    times,
    flows: times.map((t) => by.get(t)?.flows ?? 0),
    bits: times.map((t) => ((by.get(t)?.bytes ?? 0) * 8) / 60),
  };
}

function OverTime({ name, address, minutes }: { name: string; address: string | null; minutes: Minute[] }) {
  const { times, flows, bits } = timeline(minutes);
  const whose = address ?? "all";
  return (
    <div class="charts">
      <Chart id={`flows-per-minute-${name}`} title={`Flows ended per minute (${whose})`} unit="/min" times={times} series={[{ label: whose, values: flows }]} />
      <Chart
        id={`flow-bits-${name}`}
        title={`Bit rate of the flows ended each minute (${whose})`}
        unit="bit/s"
        times={times}
        series={[{ label: whose, values: bits }]}
      />
    </div>
  );
}

export function FlowsPage() {
  const [address, setAddress] = useState("");
  const [flows, setFlows] = useState<Flows | null>(null);
  const [error, setError] = useState<string | null>(null);
  async function load(addr: string) {
    try {
      const q = addr.trim() ? `?address=${encodeURIComponent(addr.trim())}` : "";
      setFlows(await get<Flows>(`/v1/flows${q}`));
      setError(null);
    } catch (e) {
      setError(fmtError(e));
    }
  }
  useEffect(() => {
    load("");
  }, []);
  return (
    <section aria-labelledby="flows-h">
      <h1 id="flows-h">Flows</h1>
      <form
        class="toolbar"
        role="search"
        onSubmit={(e) => {
          e.preventDefault();
          load(address);
        }}
      >
        <label for="flow-address">Address</label>
        <input
          id="flow-address"
          type="text"
          value={address}
          placeholder="10.0.1.5 (source or destination, before or after NAT)"
          aria-describedby={error ? "flows-error" : undefined}
          onInput={(e) => setAddress((e.target as HTMLInputElement).value)}
        />
        <button type="submit">Search</button>
      </form>
      {error && (
        <p class="error" id="flows-error" role="alert">
          {error}
        </p>
      )}
      {flows &&
        Object.entries(flows.instances).map(([name, f]) => (
          <div key={name} class="flows-instance" data-instance={name}>
            <h2>{name}</h2>
            <p class="hint">
              {f.records} flow records read ({human(f.bytes_read)}B{f.truncated ? ", the newest part of the log" : ""})
            </p>
            <div class="charts">
              <Top title="Top sources" rows={f.top_sources} id={`top-src-${name}`} />
              <Top title="Top destinations" rows={f.top_destinations} id={`top-dst-${name}`} />
            </div>
            <h3>{flows.address ? `${flows.address} over time` : "All flows over time"}</h3>
            <OverTime name={name} address={flows.address} minutes={f.per_minute} />
            <h3>
              {flows.address ? `Newest flows of ${flows.address}` : "Newest flows"} ({f.matches})
            </h3>
            <table class="flows">
              <thead>
                <tr>
                  <th scope="col">End</th>
                  <th scope="col">Source</th>
                  <th scope="col">Destination</th>
                  <th scope="col">NAT source</th>
                  <th scope="col">Protocol</th>
                  <th scope="col">Bytes</th>
                </tr>
              </thead>
              <tbody>
                {f.newest.map((r, i) => (
                  <tr key={i}>
                    <td>{typeof r.end === "number" ? new Date(r.end * 1000).toLocaleTimeString() : ""}</td>
                    <td>
                      {String(r.srcaddr)}:{String(r.srcport)}
                    </td>
                    <td>
                      {String(r.dstaddr)}:{String(r.dstport)}
                    </td>
                    <td>{r["nat-srcaddr"] === "-" ? "" : `${String(r["nat-srcaddr"])}:${String(r["nat-srcport"])}`}</td>
                    <td>{String(r.protocol)}</td>
                    <td>{String(r.bytes)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ))}
      {flows && Object.keys(flows.instances).length === 0 && <p>No instance has a flow log here (logging.flow_logs).</p>}
    </section>
  );
}
