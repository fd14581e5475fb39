// Inspection: each instance's engine state and rule counts (GET /v1/status) and the
// newest alerts and drops with their rule (GET /v1/alerts).
import { useEffect, useState } from "preact/hooks";
import { fmtError, get } from "./api";

type Dict = Record<string, any>;

export function InspectionPage() {
  const [status, setStatus] = useState<Dict | null>(null);
  const [alerts, setAlerts] = useState<Dict | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    const tick = () =>
      Promise.all([get<Dict>("/v1/status"), get<Dict>("/v1/alerts?limit=100")])
        .then(([s, a]) => {
          setStatus(s);
          setAlerts(a);
          setError(null);
        })
        .catch((e) => setError(fmtError(e)));
    tick();
    const timer = setInterval(tick, 5000);
    return () => clearInterval(timer);
  }, []);
  const names = Object.keys(status?.instances ?? {}).sort();
  return (
    <section aria-labelledby="inspection-h">
      <h1 id="inspection-h">Inspection</h1>
      {error && <p class="error" role="alert">{error}</p>}
      <table id="engines">
        <caption>Engine state per instance</caption>
        <thead>
          <tr>
            <th scope="col">Instance</th>
            <th scope="col">Engine</th>
            <th scope="col">State</th>
            <th scope="col">Rules loaded</th>
            <th scope="col">Rules rejected</th>
            <th scope="col">Alerts</th>
            <th scope="col">Restarts</th>
          </tr>
        </thead>
        <tbody>
          {names.map((n) => {
            const i = status!.instances[n].inspection ?? {};
            return (
              <tr key={n}>
                <th scope="row">{n}</th>
                <td>{i.engine ?? "off"}</td>
                <td>{i.state ?? (i.running === undefined ? "—" : i.running ? "running" : "stopped")}</td>
                <td>{i.rules_loaded ?? "—"}</td>
                <td>{i.rules_failed ?? "—"}</td>
                <td>{i.alerts_total ?? "—"}</td>
                <td>{i.engine_restarts ?? "—"}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
      <h2>Recent alerts and drops</h2>
      <table id="alerts">
        <thead>
          <tr>
            <th scope="col">Instance</th>
            <th scope="col">Time</th>
            <th scope="col">Action</th>
            <th scope="col">Rule (sid)</th>
            <th scope="col">Message</th>
            <th scope="col">Flow</th>
          </tr>
        </thead>
        <tbody>
          {Object.entries((alerts?.instances ?? {}) as Record<string, Dict>).flatMap(([n, a]) =>
            ((a.alerts ?? []) as Dict[]).map((x, k) => (
              <tr key={`${n}-${k}`}>
                <td>{n}</td>
                <td>{x.timestamp ?? (x.time ? new Date(x.time * 1000).toLocaleTimeString() : "")}</td>
                <td>{x.action ?? ""}</td>
                <td>{x.sid ?? x.signature_id ?? ""}</td>
                <td>{x.msg ?? x.signature ?? ""}</td>
                <td>
                  {x.src ?? x.src_ip ?? ""} → {x.dst ?? x.dest_ip ?? ""}
                  {x.proto ? ` ${x.proto}` : ""}
                </td>
              </tr>
            )),
          )}
        </tbody>
      </table>
    </section>
  );
}
