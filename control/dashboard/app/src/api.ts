// The only way the dashboard talks to the appliance: calls to the config API, with the
// bearer token held in sessionStorage (this tab, this session; never localStorage, never
// a URL). Every call here is a documented path of /openapi.json.

const TOKEN_KEY = "spectra.token";

export type Role = "read" | "admin";
export interface Principal {
  name: string;
  role: Role;
}
export interface FieldError {
  path: string;
  value: unknown;
  message: string;
}
export interface Change {
  op: "added" | "removed" | "changed";
  path: string;
  old?: unknown;
  new?: unknown;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: unknown,
  ) {
    super(message);
  }
  /** The field errors of a 422 (path-level), if any. */
  get fieldErrors(): FieldError[] {
    const d = this.details as { errors?: FieldError[] } | null;
    return Array.isArray(d?.errors) ? d.errors : [];
  }
}

export function getToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}
export function setToken(token: string | null): void {
  if (token === null) sessionStorage.removeItem(TOKEN_KEY);
  else sessionStorage.setItem(TOKEN_KEY, token);
}

let onUnauthorized: () => void = () => {};
export function setUnauthorizedHandler(fn: () => void): void {
  onUnauthorized = fn;
}

export interface Reply<T> {
  data: T;
  etag: string | null;
}

export async function call<T>(
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
  token: string | null = getToken(),
): Promise<Reply<T>> {
  const h: Record<string, string> = { Accept: "application/json", ...headers };
  if (token) h.Authorization = `Bearer ${token}`;
  if (body !== undefined) h["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method,
    headers: h,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
  const text = await resp.text();
  let data: unknown = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!resp.ok) {
    const e = (data as { error?: { code: string; message: string; details: unknown } })?.error;
    if (resp.status === 401 && path !== "/v1/whoami") onUnauthorized();
    throw new ApiError(resp.status, e?.code ?? "error", e?.message ?? resp.statusText, e?.details);
  }
  return { data: data as T, etag: resp.headers.get("ETag") };
}

export const get = <T>(path: string) => call<T>("GET", path).then((r) => r.data);

export function fmtError(e: unknown): string {
  if (e instanceof ApiError) return `${e.status} ${e.code}: ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}
