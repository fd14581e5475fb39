// History: every version with who/when/what (GET /v1/config/versions), a version's
// changes against its predecessor, and rollback (POST /v1/config/rollback) for admins.
import { useEffect, useState } from "preact/hooks";
import { Change, call, fmtError, get } from "./api";
import { Changes } from "./config";

interface VersionInfo {
  version: number;
  actor: string;
  created_at: number;
  summary: string;
  rollback_of: number | null;
}

export function HistoryPage({ admin }: { admin: boolean }) {
  const [versions, setVersions] = useState<VersionInfo[]>([]);
  const [message, setMessage] = useState<{ text: string; ok: boolean } | null>(null);
  const [changes, setChanges] = useState<{ version: number; changes: Change[] } | null>(null);

  async function load() {
    setVersions((await get<{ versions: VersionInfo[] }>("/v1/config/versions?limit=100")).versions);
  }
  useEffect(() => {
    load().catch((e) => setMessage({ text: fmtError(e), ok: false }));
  }, []);

  async function show(v: number) {
    try {
      const doc = await get<{ document: unknown }>(`/v1/config/versions/${v}`);
      const { data } = await call<{ changes: Change[] }>("POST", "/v1/config/validate", { document: doc.document, version: v - 1 });
      setChanges({ version: v, changes: data.changes ?? [] });
    } catch (e) {
      setMessage({ text: fmtError(e), ok: false });
    }
  }

  async function rollback(v: number) {
    const head = versions[0]?.version;
    try {
      const { data } = await call<{ version: number }>("POST", "/v1/config/rollback", { to_version: v, version: head });
      setMessage({ text: `rolled back to ${v} as version ${data.version}`, ok: true });
      await load();
    } catch (e) {
      setMessage({ text: `rollback: ${fmtError(e)}`, ok: false });
    }
  }

  return (
    <section aria-labelledby="history-h">
      <h1 id="history-h">History</h1>
      {message && (
        <p id="message" class={message.ok ? "good" : "bad"} role="status">
          {message.text}
        </p>
      )}
      <table id="versions">
        <thead>
          <tr>
            <th scope="col">Version</th>
            <th scope="col">Who</th>
            <th scope="col">When</th>
            <th scope="col">What</th>
            <th scope="col">Actions</th>
          </tr>
        </thead>
        <tbody>
          {versions.map((v, i) => (
            <tr key={v.version} data-version={v.version}>
              <th scope="row">{v.version}</th>
              <td>{v.actor}</td>
              <td>{new Date(v.created_at * 1000).toLocaleString()}</td>
              <td>
                {v.summary}
                {v.rollback_of !== null && ` (rollback to ${v.rollback_of})`}
              </td>
              <td>
                {v.version > 1 && (
                  <button type="button" onClick={() => show(v.version)} aria-label={`Show the changes of version ${v.version}`}>
                    Changes
                  </button>
                )}
                {admin && i > 0 && (
                  <button type="button" data-rollback={v.version} onClick={() => rollback(v.version)} aria-label={`Roll back to version ${v.version}`}>
                    Roll back to this
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {changes && (
        <div id="version-changes">
          <h2>Changes of version {changes.version}</h2>
          <Changes changes={changes.changes} />
        </div>
      )}
    </section>
  );
}
