// Shared helpers: start a real edge-node process and a real Chromium.
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readdirSync, copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { request as httpsRequest } from "node:https";
import { createHash, X509Certificate } from "node:crypto";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const SHOTS = join(ROOT, "build", "e2e");
mkdirSync(SHOTS, { recursive: true });

export async function startEdgeNode(extraEnv = {}) {
  const bin = process.env.EDGE_NODE_BIN;
  if (!bin) throw new Error("EDGE_NODE_BIN must name the edge-node binary (scripts/test.sh sets it)");
  const dir = mkdtempSync(join(tmpdir(), "edgedesk-e2e-"));
  const child = spawn(bin, ["serve"], {
    env: {
      ...process.env,
      EDGEDESK_SERVER__LISTEN: "127.0.0.1:0",
      EDGEDESK_STORE__PATH: JSON.stringify(join(dir, "edge.db")),
      EDGEDESK_NLU__BUNDLE: JSON.stringify(join(ROOT, "build", "models", "default")),
      ...extraEnv,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => { stderr += d; });
  const url = await new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error("edge-node did not start:\n" + stderr)), 20000);
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/kiosk: (http:\/\/\S+)/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error(`edge-node exited ${code}:\n${stderr}`)); });
  });
  return { url, stop: () => new Promise((r) => { child.once("exit", r); child.kill("SIGTERM"); }) };
}

/// Chromium; `ctl` (optional) is a controller whose HTTPS key the browser
/// trusts (pinned by its SPKI hash, as a managed kiosk or agent PC would
/// trust the operator's CA), and nothing else beyond the system's roots.
export async function launchBrowser(ctl) {
  const args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"];
  if (ctl?.spki) args.push(`--ignore-certificate-errors-spki-list=${ctl.spki}`);
  return chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true, args });
}

/// fetch() for the controller's HTTPS, trusting only its CA.
export function ctlFetch(ctl, path, { method = "GET", headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(ctl.url + path, { method, headers, ca: ctl.ca }, (res) => {
      let data = "";
      res.setEncoding("utf8");
      res.on("data", (d) => { data += d; });
      res.on("end", () => resolve({
        ok: res.statusCode >= 200 && res.statusCode < 300,
        status: res.statusCode,
        headers: { get: (k) => { const v = res.headers[k.toLowerCase()]; return Array.isArray(v) ? v.join(", ") : v ?? null; } },
        text: async () => data,
        json: async () => JSON.parse(data),
      }));
    });
    req.on("error", reject);
    if (body) req.write(body);
    req.end();
  });
}

/// Wait until the conversation log holds a bot line containing `text`.
export async function botSays(page, text, timeout = 5000) {
  await page.locator(".log .msg.bot", { hasText: text }).last().waitFor({ timeout });
}

/** The visitor types `text` and sends it; waits for a bot line containing `reply`. */
export async function visitorAsks(page, text, reply) {
  await page.locator("#input").fill(text);
  await page.keyboard.press("Enter");
  await botSays(page, reply);
}

import { createServer } from "node:net";

export function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

/// Start a real cloud-controller process; returns {url, token, stop, kill,
/// restart}: `kill` is SIGKILL, `restart` starts it again on the same data
/// and ports (what an operator's supervisor does after a crash).
export async function startController(extraEnv = {}) {
  const bin = process.env.CLOUD_CONTROLLER_BIN;
  if (!bin) throw new Error("CLOUD_CONTROLLER_BIN must name the cloud-controller binary (scripts/test.sh sets it)");
  const dir = mkdtempSync(join(tmpdir(), "edgedesk-cc-"));
  const [http, mqtt] = [await freePort(), await freePort()];
  const env = {
    ...process.env,
    EDGEDESK_CC_HTTP__LISTEN: `127.0.0.1:${http}`,
    EDGEDESK_CC_MQTT__LISTEN: `127.0.0.1:${mqtt}`,
    EDGEDESK_CC_MODELS__QUIC_LISTEN: "127.0.0.1:0",
    EDGEDESK_CC_STORE__DATA_DIR: JSON.stringify(dir),
    EDGEDESK_CC_SYNC__COMMAND_RETRY_SECS: "1",
    ...extraEnv,
  };
  let child = null;
  const launch = () => new Promise((resolve, reject) => {
    child = spawn(bin, ["serve"], { env, stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "", out = "";
    child.stderr.on("data", (d) => { stderr += d; });
    const timer = setTimeout(() => reject(new Error("controller did not start:\n" + stderr)), 20000);
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/controller: (https?:\/\/\S+?)\/?\s/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error(`controller exited ${code}:\n${stderr}`)); });
  });
  const url = await launch();
  const { readFileSync } = await import("node:fs");
  const token = readFileSync(join(dir, "admin-token"), "utf8").trim();
  const ca = readFileSync(join(dir, "mqtt-ca.pem"), "utf8");
  const server = new X509Certificate(readFileSync(join(dir, "http-server.pem"), "utf8"));
  const spki = createHash("sha256").update(server.publicKey.export({ type: "spki", format: "der" })).digest("base64");
  const caSha256 = "sha256:" + createHash("sha256").update(new X509Certificate(ca).raw).digest("hex");
  return {
    url, token, ca, spki, caSha256, dir, env,
    stop: () => new Promise((r) => { child.once("exit", r); child.kill("SIGTERM"); }),
    kill: () => new Promise((r) => { child.once("exit", r); child.kill("SIGKILL"); }),
    restart: () => launch(),
  };
}

/// Wait until `branch` is online at the controller.
/// Poll `check` (every 100 ms) until it returns true; throw after `timeout`.
export async function waitUntil(what, check, timeout = 15000) {
  const until = Date.now() + timeout;
  while (Date.now() < until) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what}: not within ${timeout} ms`);
}

export async function waitOnline(ctl, branch, timeout = 20000) {
  await waitUntil(`${branch} online`, async () => {
    const n = await adminCall(ctl, "GET", "/api/v1/nodes").catch(() => []);
    return n.some((x) => x.id === branch && x.online);
  }, timeout);
}

/// Start an edge node enrolled with `ctl` as `branch`.
export async function startBranch(ctl, branch, extraEnv = {}) {
  const { join: joinString } = await adminCall(ctl, "POST", "/api/v1/tokens", { node_id: branch });
  const dir = mkdtempSync(join(tmpdir(), "edgedesk-node-"));
  const node = await startEdgeNode({
    EDGEDESK_CLOUD__ENABLED: "true",
    EDGEDESK_CLOUD__NODE_ID: JSON.stringify(branch),
    EDGEDESK_CLOUD__JOIN: JSON.stringify(joinString),
    EDGEDESK_CLOUD__IDENTITY_PATH: JSON.stringify(join(dir, "identity.json")),
    EDGEDESK_CLOUD__HEARTBEAT_SECS: "1",
    EDGEDESK_CLOUD__ACK_TIMEOUT_SECS: "2",
    ...extraEnv,
  });
  await waitOnline(ctl, branch);
  return node;
}

/// Assert that `locator` is on screen: visible, with a non-empty box inside
/// the viewport (not only present in the DOM).
export async function assertOnScreen(page, locator, what) {
  // A list the page re-renders (tickets every few seconds) can swap the
  // element between "visible" and measuring it: measure again, for a while.
  const deadline = Date.now() + 10000;
  let box = null;
  for (;;) {
    await locator.waitFor({ state: "visible" });
    box = await locator.boundingBox().catch(() => null);
    if ((box && box.width >= 1 && box.height >= 1) || Date.now() > deadline) break;
  }
  const vp = page.viewportSize();
  if (!box || box.width < 1 || box.height < 1) throw new Error(`${what}: has no size on screen`);
  if (box.y + box.height <= 0 || box.y >= vp.height || box.x + box.width <= 0 || box.x >= vp.width) {
    throw new Error(`${what}: outside the viewport (${JSON.stringify(box)})`);
  }
}

/// Save a screenshot of `page` as build/e2e/<name>.png.
export async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`) });
}

export async function adminCall(ctl, method, path, body) {
  const r = await ctlFetch(ctl, path, {
    method,
    headers: { authorization: `Bearer ${ctl.token}`, "content-type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
  return r.status === 204 ? null : r.json();
}

/// Publish a copy of the default bundle as `version` on `ctl` (the
/// operator's `cloud-controller model publish`, on the controller's host).
export function publishVersion(ctl, version) {
  const out = mkdtempSync(join(tmpdir(), "edgedesk-bundle-"));
  const src = join(ROOT, "build", "models", "default");
  for (const f of readdirSync(src)) copyFileSync(join(src, f), join(out, f));
  const manifest = JSON.parse(readFileSync(join(out, "manifest.json"), "utf8"));
  manifest.version = version;
  writeFileSync(join(out, "manifest.json"), JSON.stringify(manifest, null, 2));
  const r = spawnSync(process.env.CLOUD_CONTROLLER_BIN, ["model", "publish", out], { env: ctl.env, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`model publish: ${r.status}\n${r.stderr}`);
}
