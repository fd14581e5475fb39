// Flows: top talkers and destinations from each instance's flow log, and a search by
// address (GET /v1/flows; the API reads only the newest part of each log).
import { useEffect, useState } from "preact/hooks";
import { fmtError, get } from "./api";
import { human } from "./overview";

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
  bytes_read: number;
  truncated: boolean;
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
