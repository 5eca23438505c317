// EdgeDesk agent console. Every chat text is inserted with textContent.
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  let csrf = null, ws = null, current = null, me = null;
  const chats = new Map(); // id -> {view, closed}
  let canned = []; // {lang, shortcut, text}

  function toast(msg) { const t = $("toast"); t.textContent = msg; t.hidden = false; setTimeout(() => { t.hidden = true; }, 4000); }

  async function api(path, opts = {}) {
    const headers = { "content-type": "application/json" };
    if (csrf) headers["x-csrf-token"] = csrf;
    return fetch(path, { credentials: "same-origin", ...opts, headers });
  }

  function showLogin() { $("login").hidden = false; $("app").hidden = true; $("username").focus(); }

  function showApp(session) {
    me = session.agent; csrf = session.csrf;
    $("login").hidden = true; $("app").hidden = false;
    $("who").textContent = `${me.display_name} (${me.role})`;
    connect();
    loadCanned(); loadTickets(); setInterval(loadTickets, 10000);
    if (me.role === "supervisor" || me.role === "admin") {
      $("dashboard").hidden = false; refreshDashboard(); setInterval(refreshDashboard, 5000);
      $("manage").hidden = false; renderCanned();
    }
    if (me.role === "admin") { $("agent-form").hidden = false; renderAgents(); }
  }

  async function loadCanned() {
    const r = await api("/console/api/canned");
    if (r.ok) canned = await r.json();
  }

  async function renderCanned() {
    await loadCanned();
    const ul = $("canned-list"); ul.replaceChildren();
    for (const c of canned) {
      const li = document.createElement("li");
      li.textContent = `${c.lang} /${c.shortcut}: ${c.text} `;
      const b = document.createElement("button"); b.type = "button"; b.textContent = "Delete";
      b.addEventListener("click", async () => { await api(`/console/api/canned/${c.id}`, { method: "DELETE" }); renderCanned(); });
      li.appendChild(b); ul.appendChild(li);
    }
  }

  async function renderAgents() {
    const r = await api("/console/api/agents");
    if (!r.ok) return;
    const ul = $("agent-list"); ul.replaceChildren();
    for (const a of await r.json()) {
      const li = document.createElement("li");
      li.textContent = `${a.display_name} (${a.username}, ${a.role}${a.disabled ? ", disabled" : ""}) `;
      if (!a.disabled && a.id !== me.id) {
        const b = document.createElement("button"); b.type = "button"; b.textContent = "Disable";
        b.addEventListener("click", async () => { await api(`/console/api/agents/${encodeURIComponent(a.id)}/disable`, { method: "POST" }); renderAgents(); });
        li.appendChild(b);
      }
      ul.appendChild(li);
    }
  }

  async function loadTickets() {
    const r = await api("/console/api/tickets");
    if (!r.ok) return;
    const ul = $("tickets"); ul.replaceChildren();
    for (const t of await r.json()) {
      const li = document.createElement("li");
      const p = document.createElement("p");
      p.textContent = `${t.name} (${t.contact}) — ${t.message} [${t.state}]`;
      li.appendChild(p);
      if (t.state === "open") {
        const b = document.createElement("button"); b.type = "button"; b.textContent = "Claim";
        b.addEventListener("click", async () => { await api(`/console/api/tickets/${encodeURIComponent(t.id)}/claim`, { method: "POST" }); loadTickets(); });
        li.appendChild(b);
      } else if (t.state === "claimed") {
        const b = document.createElement("button"); b.type = "button"; b.textContent = "Resolve";
        b.addEventListener("click", async () => {
          const note = window.prompt("Resolution note") || "";
          await api(`/console/api/tickets/${encodeURIComponent(t.id)}/resolve`, { method: "POST", body: JSON.stringify({ note }) });
          loadTickets();
        });
        li.appendChild(b);
      }
      ul.appendChild(li);
    }
  }

  function bars(svg, values, max) {
    svg.replaceChildren();
    const w = 300 / Math.max(values.length, 1);
    values.forEach((v, i) => {
      if (v == null) return;
      const h = Math.max(1, (v / max) * 76);
      const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      r.setAttribute("x", String(i * w + 1)); r.setAttribute("y", String(78 - h));
      r.setAttribute("width", String(Math.max(1, w - 2))); r.setAttribute("height", String(h));
      const t = document.createElementNS("http://www.w3.org/2000/svg", "title");
      t.textContent = String(Math.round(v * 10) / 10);
      r.appendChild(t);
      svg.appendChild(r);
    });
  }

  async function refreshDashboard() {
    const r = await api("/console/api/dashboard");
    if (!r.ok) return;
    const d = await r.json();
    $("d-waiting").textContent = String(d.live.waiting);
    $("d-wait").textContent = `${Math.round(d.live.longest_wait_ms / 1000)} s`;
    $("d-online").textContent = String(d.nodes_online);
    $("d-offline").textContent = String(d.nodes_offline);
    const tb = $("d-agents"); tb.replaceChildren();
    for (const a of d.live.agents) {
      const tr = document.createElement("tr");
      for (const v of [a.name || a.id, a.presence, `${a.chats} / ${a.capacity}`]) { const td = document.createElement("td"); td.textContent = v; tr.appendChild(td); }
      tb.appendChild(tr);
    }
    const frt = d.days.map((x) => x.first_response_s);
    bars($("d-frt"), frt, Math.max(1, ...frt.filter((x) => x != null)));
    bars($("d-csat"), d.days.map((x) => x.csat), 5);
  }

  function renderList() {
    const ul = $("chats");
    ul.replaceChildren();
    for (const [id, c] of chats) {
      const li = document.createElement("li");
      if (c.closed) li.className = "closed";
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = `${c.view.node_id} · ${c.view.lang} · ${(c.view.intents || []).join(", ") || "chat"}`;
      b.setAttribute("aria-current", String(id === current));
      b.addEventListener("click", () => { current = id; renderList(); renderChat(); });
      li.appendChild(b);
      ul.appendChild(li);
    }
  }

  function lineEl(l) {
    const li = document.createElement("li");
    li.className = l.sender;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = l.sender === "agent" ? "You" : l.sender;
    const body = document.createElement("span");
    body.textContent = l.text;
    li.append(who, body);
    return li;
  }

  function renderChat() {
    const c = current && chats.get(current);
    $("lines").replaceChildren();
    $("reply").hidden = !c || c.closed;
    $("chat-head").textContent = c ? `Branch ${c.view.node_id} — language ${c.view.lang}${c.closed ? " — closed" : ""}` : "No chat selected";
    if (!c) return;
    for (const l of c.view.lines) $("lines").appendChild(lineEl(l));
    $("lines").scrollTop = $("lines").scrollHeight;
  }

  function connect() {
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/console/ws";
    ws = new WebSocket(url);
    ws.addEventListener("open", () => { $("conn").textContent = "Connected"; ws.send(JSON.stringify({ type: "presence", state: $("presence").value })); });
    ws.addEventListener("close", () => { $("conn").textContent = "Reconnecting…"; setTimeout(connect, 1500); });
    ws.addEventListener("message", (ev) => {
      let f; try { f = JSON.parse(ev.data); } catch { return; }
      if (f.type === "assigned") {
        chats.set(f.chat.id, { view: f.chat, closed: false });
        if (!current) current = f.chat.id;
        renderList(); renderChat();
      } else if (f.type === "line") {
        const c = chats.get(f.chat);
        if (c) { c.view.lines.push(f.line); if (f.chat === current) { $("lines").appendChild(lineEl(f.line)); $("lines").scrollTop = $("lines").scrollHeight; } }
      } else if (f.type === "closed" || f.type === "requeued") {
        const c = chats.get(f.chat);
        if (c) { c.closed = true; renderList(); renderChat(); }
      } else if (f.type === "typing") {
        if (f.chat === current) {
          const head = $("chat-head");
          head.dataset.typing = "1";
          const base = head.textContent.replace(/ — visitor is typing…$/, "");
          head.textContent = base + " — visitor is typing…";
          setTimeout(() => { head.textContent = head.textContent.replace(/ — visitor is typing…$/, ""); }, 3000);
        }
      } else if (f.type === "node_status") {
        toast(f.online ? `Branch ${f.node} is back online.` : `Branch ${f.node} went offline — your messages will be delivered when it returns.`);
        $("conn").textContent = f.online ? "Connected" : `Branch ${f.node} offline`;
      } else if (f.type === "error") {
        toast(f.message);
      }
    });
  }

  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const r = await api("/console/api/login", { method: "POST", body: JSON.stringify({ username: $("username").value, password: $("password").value }) });
    if (r.ok) { showApp(await r.json()); } else { const b = await r.json().catch(() => ({})); $("login-error").textContent = b.error || "Login failed"; }
  });
  $("logout").addEventListener("click", async () => { await api("/console/api/logout", { method: "POST" }); location.reload(); });
  $("presence").addEventListener("change", () => { if (ws && ws.readyState === 1) ws.send(JSON.stringify({ type: "presence", state: $("presence").value })); });
  $("reply").addEventListener("submit", (e) => {
    e.preventDefault();
    let text = $("reply-text").value.trim();
    // "/shortcut" expands to the canned response in the chat's language.
    if (text.startsWith("/") && current) {
      const lang = chats.get(current).view.lang;
      const hit = canned.find((c) => c.lang === lang && "/" + c.shortcut === text);
      if (hit) text = hit.text;
    }
    if (!text || !current) return;
    ws.send(JSON.stringify({ type: "message", chat: current, text }));
    const line = { sender: "agent", text, at: Date.now() };
    chats.get(current).view.lines.push(line);
    $("lines").appendChild(lineEl(line));
    $("reply-text").value = "";
  });
  $("reply-text").addEventListener("input", () => { if (current && ws && ws.readyState === 1) ws.send(JSON.stringify({ type: "typing", chat: current })); });
  $("canned-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const r = await api("/console/api/canned", { method: "POST", body: JSON.stringify({ lang: $("canned-lang").value, shortcut: $("canned-shortcut").value, text: $("canned-text").value }) });
    if (!r.ok) { const b = await r.json().catch(() => ({})); toast(b.error || "Could not save"); return; }
    $("canned-shortcut").value = ""; $("canned-text").value = "";
    renderCanned();
  });
  $("agent-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = {
      username: $("new-username").value, display_name: $("new-name").value, role: $("new-role").value,
      password: $("new-password").value, languages: $("new-languages").value.split(",").map((s) => s.trim()).filter(Boolean),
      capacity: Number($("new-capacity").value),
    };
    const r = await api("/console/api/agents", { method: "POST", body: JSON.stringify(body) });
    if (!r.ok) { const b = await r.json().catch(() => ({})); toast(b.error || "Could not create"); return; }
    $("new-password").value = "";
    renderAgents();
  });
  async function loadColleagues() {
    const r = await api("/console/api/colleagues");
    if (!r.ok) return;
    const sel = $("transfer-to");
    const keep = sel.value;
    sel.replaceChildren(new Option("Transfer to…", ""));
    for (const c of await r.json()) sel.appendChild(new Option(`${c.name} (${c.free} free)`, c.id));
    sel.value = keep;
  }
  $("transfer-to").addEventListener("focus", loadColleagues);
  $("transfer").addEventListener("click", () => {
    const to = $("transfer-to").value;
    if (current && to) ws.send(JSON.stringify({ type: "transfer", chat: current, to }));
  });
  $("requeue").addEventListener("click", () => {
    if (current) ws.send(JSON.stringify({ type: "transfer", chat: current, to: null }));
  });
  $("search").addEventListener("submit", async (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    const put = (k, v) => { if (v) p.set(k, v); };
    put("q", $("search-q").value.trim());
    put("node", $("search-node").value.trim());
    put("intent", $("search-intent").value.trim());
    put("agent", $("search-agent").value.trim());
    put("escalated", $("search-escalated").value);
    const day = (id, plus) => { const v = $(id).value; return v ? String(Date.parse(v + "T00:00:00Z") + plus) : ""; };
    put("since", day("search-since", 0));
    put("until", day("search-until", 86400000));
    const r = await api("/console/api/chats?" + p.toString());
    if (!r.ok) return;
    const ul = $("results"); ul.replaceChildren();
    for (const c of await r.json()) {
      const li = document.createElement("li");
      const b = document.createElement("button"); b.type = "button";
      b.textContent = `${c.node_id} · ${new Date(c.created_at).toLocaleString()} · ${c.escalated ? c.state : "bot only"}`;
      b.addEventListener("click", async () => {
        const v = await (await api("/console/api/chats/" + encodeURIComponent(c.id))).json();
        current = null; renderList();
        $("reply").hidden = true;
        $("chat-head").textContent = `History: ${v.node_id} — ${v.resolution || v.state}${v.rating ? " — rated " + v.rating : ""}`;
        $("lines").replaceChildren(...v.lines.map(lineEl));
      });
      li.appendChild(b); ul.appendChild(li);
    }
  });
  $("close-chat").addEventListener("click", () => {
    if (!current) return;
    ws.send(JSON.stringify({ type: "close", chat: current, resolution: $("resolution").value }));
  });

  api("/console/api/me").then(async (r) => { if (r.ok) showApp(await r.json()); else showLogin(); }).catch(showLogin);
})();
