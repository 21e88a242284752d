// A real `python -m streamcore_server serve` for the tests: its own SQLite database and data dir, a free
// loopback port, ready once /readyz answers; stopped by its pid.
import { spawn } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "..", "..", "..");
// The repository's environment (make build), unless the caller names another interpreter.
const python = process.env.STREAMCORE_PYTHON || path.join(repo, ".venv", "bin", "python");

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Poll `check` until it returns a truthy value; fail after `timeoutMs` with `what`. */
export async function until(check, { timeoutMs = 10000, intervalMs = 20, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export class Server {
  static async start(env = {}) {
    const server = new Server();
    await server._start(env);
    return server;
  }

  async _start(env) {
    this.dir = mkdtempSync(path.join(tmpdir(), "streamcore-js-"));
    this.port = await freePort();
    this.http = `http://127.0.0.1:${this.port}`;
    this.ws = `ws://127.0.0.1:${this.port}/v2/realtime/stream`;
    this.logPath = path.join(this.dir, "serve.log");
    const log = openSync(this.logPath, "w");
    this.proc = spawn(python, ["-m", "streamcore_server", "serve"], {
      cwd: this.dir,
      env: {
        ...process.env,
        DATABASE_URL: `sqlite+aiosqlite:///${this.dir}/var/streamcore.db`,
        DATA_DIR: path.join(this.dir, "var"),
        LOG_LEVEL: "warning",
        ...env,
        HOST: "127.0.0.1",
        PORT: String(this.port),
      },
      stdio: ["ignore", log, log],
    });
    this.exited = new Promise((resolve) => this.proc.once("exit", (code, signal) => resolve({ code, signal })));
    let gone = false;
    this.exited.then(() => (gone = true));
    await until(
      async () => {
        if (gone) throw new Error(`server exited:\n${readFileSync(this.logPath, "utf8")}`);
        try {
          return (await fetch(`${this.http}/readyz`)).status === 200;
        } catch {
          return false;
        }
      },
      { timeoutMs: 30000, intervalMs: 100, what: "the server to become ready" },
    );
  }

  async login(email = "user@example.com", password = "changeme") {
    const r = await this.request("POST", "/auth/login", { email, password });
    if (r.status !== 200) throw new Error(`login: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body.accessToken;
  }

  async request(method, route, body, token) {
    const headers = { "content-type": "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    const r = await fetch(`${this.http}${route}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    let parsed = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // keep the text
    }
    return { status: r.status, headers: r.headers, body: parsed };
  }

  /** POST /v2/realtime/publish; answers the accepted count. */
  async publish(token, events) {
    const r = await this.request("POST", "/v2/realtime/publish", { events }, token);
    if (r.status !== 202) throw new Error(`publish: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body.accepted;
  }

  async metrics() {
    const r = await this.request("GET", "/v1/system/metrics/aggregated");
    return r.body;
  }

  async stop(signal = "SIGTERM") {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      process.kill(this.proc.pid, signal);
      const timer = setTimeout(() => process.kill(this.proc.pid, "SIGKILL"), 15000);
      await this.exited;
      clearTimeout(timer);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
