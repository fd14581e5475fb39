// Entry point: login, the navigation between pages, logout.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { ApiError, Principal, call, fmtError, getToken, setToken, setUnauthorizedHandler } from "./api";
import { Overview } from "./overview";
import { ConfigPage } from "./config";
import { HistoryPage } from "./history";
import { InspectionPage } from "./inspection";
import { FlowsPage } from "./flows";
import { AiPage } from "./ai";
import "./style.css";

const PAGES = [
  { id: "overview", title: "Overview" },
  { id: "config", title: "Config" },
  { id: "history", title: "History" },
  { id: "inspection", title: "Inspection" },
  { id: "flows", title: "Flows" },
  { id: "ai", title: "AI gateway" },
] as const;
type PageId = (typeof PAGES)[number]["id"];

function pageFromHash(): PageId {
  const h = location.hash.replace(/^#\/?/, "");
  return (PAGES.find((p) => p.id === h)?.id ?? "overview") as PageId;
}

function Login({ onLogin }: { onLogin: (p: Principal) => void }) {
  const [token, setTok] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  async function submit(ev: Event) {
    ev.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const { data } = await call<Principal>("GET", "/v1/whoami", undefined, {}, token.trim());
      setToken(token.trim());
      onLogin(data);
    } catch (e) {
      setError(e instanceof ApiError && e.status === 401 ? "That token is not valid." : fmtError(e));
    } finally {
      setBusy(false);
    }
  }
  return (
    <main class="login">
      <h1>Spectra Gateway</h1>
      <form onSubmit={submit} aria-describedby="login-help">
        <label for="token">API token</label>
        <input
          id="token"
          type="password"
          autocomplete="off"
          required
          value={token}
          onInput={(e) => setTok((e.target as HTMLInputElement).value)}
          aria-invalid={error ? "true" : undefined}
          aria-describedby={error ? "login-error" : undefined}
        />
        <p id="login-help" class="hint">
          A token from <code>spectra token new</code> or the instance console. It stays in this tab's
          session storage only and is sent as a bearer header.
        </p>
        {error && (
          <p id="login-error" class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" id="login" disabled={busy}>
          Log in
        </button>
      </form>
    </main>
  );
}

function App() {
  const [who, setWho] = useState<Principal | null>(null);
  const [checking, setChecking] = useState(getToken() !== null);
  const [page, setPage] = useState<PageId>(pageFromHash());

  function logout() {
    setToken(null);
    setWho(null);
  }
  useEffect(() => {
    setUnauthorizedHandler(logout);
    const onHash = () => setPage(pageFromHash());
    addEventListener("hashchange", onHash);
    if (getToken()) {
      call<Principal>("GET", "/v1/whoami")
        .then((r) => setWho(r.data))
        .catch(() => setToken(null))
        .finally(() => setChecking(false));
    }
    return () => removeEventListener("hashchange", onHash);
  }, []);

  if (checking) return <p class="loading">Loading…</p>;
  if (!who) return <Login onLogin={setWho} />;
  const admin = who.role === "admin";
  return (
    <>
      <header class="top">
        <span class="brand">Spectra Gateway</span>
        <nav aria-label="Pages">
          <ul>
            {PAGES.map((p) => (
              <li key={p.id}>
                <a href={`#/${p.id}`} aria-current={p.id === page ? "page" : undefined}>
                  {p.title}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <span class="who" id="who">
          {who.name} ({admin ? "admin" : "read-only"})
        </span>
        <button type="button" id="logout" onClick={logout}>
          Log out
        </button>
      </header>
      <main id="main">
        {page === "overview" && <Overview />}
        {page === "config" && <ConfigPage admin={admin} />}
        {page === "history" && <HistoryPage admin={admin} />}
        {page === "inspection" && <InspectionPage />}
        {page === "flows" && <FlowsPage />}
        {page === "ai" && <AiPage admin={admin} />}
      </main>
    </>
  );
}

render(<App />, document.getElementById("root")!);
