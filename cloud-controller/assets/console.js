// EdgeDesk agent console. Chat text is only ever inserted with textContent.
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const RANK = { agent: 0, supervisor: 1, admin: 2 };
  const TITLE = "EdgeDesk console";
  const TYPING_SHOWN_MS = 6000;
  const TYPING_SEND_MS = 2000;

  let me = null, csrf = null, ws = null, retryMs = 1000, view = "chats";
  let current = null; // id of the chat shown
  let canned = []; // {id, lang, shortcut, text}
  let openTickets = 0;
  // id -> {view: ChatView, state: "open"|"closed"|"gone", note, unread, present, branchDown}
  const chats = new Map();
  // Lines not yet acknowledged by the controller, oldest first:
  // {client_id, chat, text, at, status: "sending"|"failed", error}
  let pending = [];

  // ---------- small helpers
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const dateTime = (ms) => new Date(ms).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  function ago(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return `${s} s`;
    const m = Math.round(s / 60);
    return m < 60 ? `${m} min` : `${Math.floor(m / 60)} h ${m % 60} min`;
  }
  const LANGS = { en: "English", zh: "Chinese (中文)" };
  const INTENT_WORDS = {
    human_agent: "Asked for a person", book_appointment: "Appointment", greeting: "Greeting",
    card_arrival: "Card not arrived", lost_or_stolen_card: "Lost or stolen card", card_swallowed: "Card kept by ATM",
    cancel_transfer: "Cancel a transfer", atm_support: "ATM help", out_of_scope: "Something else",
  };
  function intentWords(id) {
    if (INTENT_WORDS[id]) return INTENT_WORDS[id];
    const words = id.replace(/_/g, " ").replace(/\batm\b/gi, "ATM").replace(/\bpin\b/gi, "PIN");
    return words.charAt(0).toUpperCase() + words.slice(1);
  }
  let toastTimer = null;
  function toast(msg, bad = true) {
    const t = $("toast");
    t.textContent = msg; t.classList.toggle("bad", bad); t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, 5000);
  }
  async function api(path, opts = {}) {
    const headers = { "content-type": "application/json" };
    if (csrf) headers["x-csrf-token"] = csrf;
    return fetch(path, { credentials: "same-origin", ...opts, headers });
  }
  async function errorOf(r, fallback) {
    const b = await r.json().catch(() => ({}));
    return b.error || fallback;
  }
  const allowed = (role) => me && RANK[me.role] >= RANK[role];

  // ---------- login
  function showLogin() {
    $("app").hidden = true; $("login").hidden = false;
    $("username").focus();
  }
  function showApp(session) {
    me = session.agent; csrf = session.csrf;
    $("login").hidden = true; $("app").hidden = false;
    $("who").textContent = `${me.display_name} · ${me.role}`;
    $("who").title = $("who").textContent;
    for (const e of document.querySelectorAll("[data-role]")) e.hidden = !allowed(e.dataset.role);
    if ("Notification" in window && Notification.permission === "default") $("alerts").hidden = false;
    loadPending();
    connect();
    loadCanned(); loadTickets();
    setInterval(loadTickets, 10000);
    setInterval(() => { renderList(); renderHead(); }, 15000);
    setInterval(() => { if (view === "dashboard") refreshDashboard(); }, 5000);
    show("chats");
  }
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("login-error").textContent = "";
    let r;
    try {
      r = await api("/console/api/login", { method: "POST", body: JSON.stringify({ username: $("username").value, password: $("password").value }) });
    } catch { $("login-error").textContent = "Cannot reach the controller. Check the connection and try again."; return; }
    if (r.ok) { $("password").value = ""; showApp(await r.json()); }
    else $("login-error").textContent = await errorOf(r, `Login failed (${r.status})`);
  });
  $("logout").addEventListener("click", async () => {
    await api("/console/api/logout", { method: "POST" }).catch(() => {});
    sessionStorage.removeItem(pendingKey());
    location.reload();
  });

  // ---------- sections
  function show(name) {
    view = name;
    for (const t of document.querySelectorAll(".tab")) {
      if (t.dataset.view === name) t.setAttribute("aria-current", "page"); else t.removeAttribute("aria-current");
    }
    for (const v of ["chats", "tickets", "history", "labels", "dashboard", "settings"]) $("view-" + v).hidden = v !== name;
    if (name === "tickets") loadTickets();
    if (name === "labels") { loadLabels(); loadSuggestions(); loadReview(); loadAnswers(); }
    if (name === "dashboard") refreshDashboard();
    if (name === "settings") { renderCanned(); if (allowed("admin")) renderAgents(); }
  }
  for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => show(t.dataset.view));

  // ---------- attention: sound, desktop notification, title badge
  let audio = null;
  function beep() {
    try {
      audio = audio || new AudioContext();
      if (audio.state === "suspended") audio.resume();
      const o = audio.createOscillator(), g = audio.createGain();
      o.frequency.value = 880;
      g.gain.setValueAtTime(0.15, audio.currentTime);
      g.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.4);
      o.connect(g); g.connect(audio.destination);
      o.start(); o.stop(audio.currentTime + 0.4);
    } catch { /* no audio device */ }
  }
  function notify(title, body) {
    if (!("Notification" in window) || Notification.permission !== "granted" || !document.hidden) return;
    try { const n = new Notification(title, { body, tag: "edgedesk" }); n.onclick = () => { window.focus(); n.close(); }; } catch { /* ignored */ }
  }
  $("alerts").addEventListener("click", async () => {
    beep(); // also unlocks sound after a reload
    if ("Notification" in window) await Notification.requestPermission();
    $("alerts").hidden = true;
  });
  function updateBadges() {
    let unread = 0;
    for (const c of chats.values()) unread += c.unread;
    $("badge-chats").textContent = String(unread); $("badge-chats").hidden = unread === 0;
    $("badge-tickets").textContent = String(openTickets); $("badge-tickets").hidden = openTickets === 0;
    document.title = unread > 0 ? `(${unread}) ${TITLE}` : TITLE;
  }

  // ---------- chats
  const label = (v) => `Visitor at ${v.node_id}`;
  function linesOf(id) {
    const c = chats.get(id);
    const mine = pending.filter((p) => p.chat === id).map((p) => ({ sender: "agent", author: me.display_name, text: p.text, at: p.at, pending: p }));
    return c.view.lines.concat(mine);
  }
  function renderList() {
    const ul = $("chats");
    ul.replaceChildren();
    const ids = orderedChats();
    $("chats-empty").hidden = ids.length > 0;
    for (const id of ids) {
      const c = chats.get(id), v = c.view;
      const li = el("li");
      const b = el("button", "chat-item" + (c.state !== "open" ? " closed" : ""));
      b.type = "button";
      b.setAttribute("aria-current", String(id === current));
      b.dataset.chat = id;
      const lines = linesOf(id), last = lines[lines.length - 1];
      b.append(el("span", "name", label(v)));
      b.append(el("span", "when", c.state === "open" ? ago(v.queued_at || v.created_at) : (c.state === "closed" ? "closed" : "moved")));
      b.append(el("span", "preview", last ? `${whoOf(last)}: ${last.text}` : "No messages yet"));
      if (c.unread > 0) { const u = el("span", "badge unread", String(c.unread)); u.setAttribute("aria-label", `${c.unread} unread`); b.append(u); }
      const tags = el("span", "tags");
      tags.append(el("span", "tag", LANGS[v.lang] || v.lang));
      for (const i of (v.intents || []).slice(0, 3)) tags.append(el("span", "tag", intentWords(i)));
      if (c.state === "open" && !c.present) tags.append(el("span", "tag away", "Visitor left"));
      if (c.state !== "open") tags.append(el("span", "tag done", c.state === "closed" ? "Closed" : "Moved"));
      b.append(tags);
      b.addEventListener("click", () => select(id));
      li.append(b); ul.append(li);
    }
  }
  function orderedChats() {
    // Open chats first (oldest waiting first), then closed ones.
    return [...chats.keys()].sort((a, b) => {
      const ca = chats.get(a), cb = chats.get(b);
      if ((ca.state === "open") !== (cb.state === "open")) return ca.state === "open" ? -1 : 1;
      return (ca.view.queued_at || ca.view.created_at) - (cb.view.queued_at || cb.view.created_at);
    });
  }
  function select(id) {
    current = id;
    const c = id && chats.get(id);
    if (c) c.unread = 0;
    $("view-chats").classList.toggle("open", !!c);
    renderList(); renderChat(); updateBadges();
    if (c && c.state === "open") $("reply-text").focus();
  }
  $("back").addEventListener("click", () => select(null));

  function whoOf(l) {
    switch (l.sender) {
      case "visitor": return "Visitor";
      case "bot": return "Bot";
      case "system": return "EdgeDesk";
      case "agent": return l.author || "Agent";
      default: return l.sender;
    }
  }
  function lineEl(l) {
    const li = el("li", l.sender);
    const head = el("span", "who", whoOf(l));
    const t = el("time", null, clock(l.at));
    t.dateTime = new Date(l.at).toISOString();
    head.append(t);
    li.append(head, el("span", "text", l.text));
    if (l.pending) {
      const p = l.pending;
      li.classList.add(p.status === "failed" ? "failed" : "pending");
      const state = el("span", "state", p.status === "failed" ? `Not sent: ${p.error}` : (socketOpen() ? "Sending…" : "Waiting for the connection…"));
      if (p.status === "failed") {
        const retry = el("button", null, "Retry"); retry.type = "button";
        retry.addEventListener("click", () => { p.status = "sending"; p.error = null; savePending(); flush(); renderChat(); });
        const drop = el("button", null, "Discard"); drop.type = "button";
        drop.addEventListener("click", () => { pending = pending.filter((x) => x !== p); savePending(); renderChat(); });
        state.append(retry, drop);
      }
      li.append(state);
    }
    return li;
  }
  function renderHead() {
    const c = current && chats.get(current);
    $("chat-none").hidden = !!c;
    $("chat-head").hidden = !c;
    if (!c) { $("chat-status").hidden = true; return; }
    const v = c.view;
    $("chat-title").textContent = label(v);
    const bits = [LANGS[v.lang] || v.lang];
    if (v.queued_at) bits.push(`asked for a person at ${clock(v.queued_at)} (${ago(v.queued_at)} ago)`);
    if (v.intents && v.intents.length) bits.push(v.intents.map(intentWords).join(", "));
    if (c.state === "open") bits.push(c.present ? "visitor is here" : "visitor left the page");
    $("chat-meta").textContent = bits.join(" · ");
    $("chat-actions").hidden = c.state !== "open";
    let status = null, closed = false;
    if (c.state !== "open") { status = c.note; closed = true; }
    else if (c.branchDown) status = `Branch ${v.node_id} is offline. Your messages will be delivered when it is back.`;
    else if (!c.present) status = "The visitor left the page. They may come back; if not, the chat closes by itself.";
    $("chat-status").hidden = !status;
    $("chat-status").textContent = status || "";
    $("chat-status").classList.toggle("closed", closed);
  }
  function renderChat() {
    const c = current && chats.get(current);
    renderHead();
    const ol = $("lines");
    ol.replaceChildren();
    $("reply").hidden = !c || c.state !== "open";
    showTyping();
    closePicker();
    if (!c) return;
    for (const l of linesOf(current)) ol.append(lineEl(l));
    ol.scrollTop = ol.scrollHeight;
  }
  // The visitor is typing in a chat until this time (ms), refreshed by each
  // typing signal; their line ends it.
  const typingUntil = new Map();
  function showTyping() {
    const until = current ? typingUntil.get(current) || 0 : 0;
    const left = until - Date.now();
    $("typing").hidden = left <= 0;
    clearTimeout(showTyping.timer);
    if (left > 0) showTyping.timer = setTimeout(showTyping, left);
  }
  function addLine(id, line) {
    const c = chats.get(id);
    if (!c) return;
    if (line.sender === "visitor") typingUntil.delete(id);
    c.view.lines.push(line);
    if (id === current && !document.hidden) {
      renderChat();
    } else if (line.sender === "visitor") {
      c.unread += 1;
      notify("New message", `${label(c.view)}: ${line.text}`);
      if (document.hidden) beep();
    }
    renderList(); updateBadges();
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && current && chats.get(current)) { chats.get(current).unread = 0; renderList(); renderChat(); updateBadges(); }
  });

  // ---------- the console socket
  const socketOpen = () => ws && ws.readyState === 1;
  function setConn(ok, text) { const c = $("conn"); c.textContent = text; c.classList.toggle("bad", !ok); }
  function send(obj) { if (!socketOpen()) return false; ws.send(JSON.stringify(obj)); return true; }
  function connect() {
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/console/ws";
    ws = new WebSocket(url);
    ws.addEventListener("open", () => {
      retryMs = 1000;
      setConn(true, "Connected");
      send({ type: "presence", state: $("presence").value });
      flush();
      renderChat();
    });
    ws.addEventListener("close", async () => {
      setConn(false, "Reconnecting… your messages will be sent when it is back");
      renderChat();
      // A session that ended (logged out elsewhere, disabled) goes back to the login.
      const r = await api("/console/api/me").catch(() => null);
      if (r && r.status === 401) { showLogin(); $("login-error").textContent = "Your session ended. Please log in again."; return; }
      // A new role (made supervisor, or no longer one): start again with it.
      if (r && r.ok) { const now = await r.json(); if (now.agent.role !== me.role) { location.reload(); return; } }
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 8000);
    });
    ws.addEventListener("message", (ev) => {
      let f; try { f = JSON.parse(ev.data); } catch { return; }
      onFrame(f);
    });
  }
  function onFrame(f) {
    switch (f.type) {
      case "assigned": {
        const known = chats.get(f.chat.id);
        const fresh = !known || known.state !== "open";
        chats.set(f.chat.id, { view: f.chat, state: "open", note: null, unread: fresh ? 1 : known.unread, present: f.chat.visitor_present, branchDown: false });
        if (fresh) {
          beep();
          notify("New chat", `${label(f.chat)} — ${(f.chat.intents || []).map(intentWords).join(", ") || "asked for a person"}`);
        }
        if (!current && window.matchMedia("(min-width: 761px)").matches) { select(f.chat.id); break; }
        if (f.chat.id === current) { chats.get(current).unread = 0; renderChat(); }
        renderList(); updateBadges();
        break;
      }
      case "line": addLine(f.chat, f.line); break;
      case "closed":
      case "requeued": {
        const c = chats.get(f.chat);
        if (!c) break;
        c.state = f.type === "closed" ? "closed" : "gone";
        c.note = f.type === "requeued" ? "This chat left you: it was transferred or went back to the queue."
          : (f.reason ? `Closed: ${f.reason}` : "You closed this chat.");
        pending = pending.filter((p) => p.chat !== f.chat || p.status !== "failed");
        renderList(); if (f.chat === current) renderChat(); updateBadges();
        break;
      }
      case "visitor": {
        const c = chats.get(f.chat);
        if (c) { c.present = f.present; renderList(); if (f.chat === current) renderHead(); }
        break;
      }
      case "typing":
        typingUntil.set(f.chat, Date.now() + TYPING_SHOWN_MS);
        showTyping();
        break;
      case "node_status": {
        for (const c of chats.values()) if (c.view.node_id === f.node) c.branchDown = !f.online;
        renderHead();
        toast(f.online ? `Branch ${f.node} is back online.` : `Branch ${f.node} went offline — your messages will be delivered when it returns.`, !f.online);
        break;
      }
      case "ack": {
        const p = pending.find((x) => x.client_id === f.client_id);
        if (!p) break;
        pending = pending.filter((x) => x !== p); savePending();
        const c = chats.get(p.chat);
        if (c) c.view.lines.push({ sender: "agent", author: me.display_name, text: p.text, at: p.at });
        if (p.chat === current) renderChat();
        renderList();
        break;
      }
      case "error": {
        const p = f.client_id && pending.find((x) => x.client_id === f.client_id);
        if (p) { p.status = "failed"; p.error = f.message; savePending(); if (p.chat === current) renderChat(); }
        else toast(f.message);
        break;
      }
      default: break;
    }
  }

  // ---------- sending lines: shown at once, kept until acknowledged
  const pendingKey = () => `edgedesk-pending-${me ? me.id : ""}`;
  function savePending() { try { sessionStorage.setItem(pendingKey(), JSON.stringify(pending)); } catch { /* full */ } }
  function loadPending() { try { pending = JSON.parse(sessionStorage.getItem(pendingKey()) || "[]"); } catch { pending = []; } }
  function flush() {
    for (const p of pending) {
      if (p.status !== "sending") continue;
      if (!send({ type: "message", chat: p.chat, text: p.text, client_id: p.client_id })) return;
    }
  }
  function sendLine(chat, text) {
    const id = "c" + Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
    pending.push({ client_id: id, chat, text, at: Date.now(), status: "sending", error: null });
    savePending();
    flush();
    renderChat(); renderList();
  }

  // ---------- reply box, canned picker, typing
  let picker = { items: [], index: 0 };
  function closePicker() { $("canned-picker").hidden = true; picker = { items: [], index: 0 }; }
  function openPicker(query) {
    const c = chats.get(current);
    const lang = c ? c.view.lang : "en";
    const q = query.toLowerCase();
    const pool = canned.filter((x) => x.lang === lang);
    picker.items = (pool.length ? pool : canned).filter((x) => x.shortcut.toLowerCase().includes(q) || x.text.toLowerCase().includes(q)).slice(0, 8);
    picker.index = Math.min(picker.index, Math.max(0, picker.items.length - 1));
    const ul = $("canned-picker");
    ul.replaceChildren();
    if (!picker.items.length) {
      ul.append(el("li", "none", canned.length ? "No canned reply matches." : "No canned replies yet (a supervisor adds them in Settings)."));
    }
    picker.items.forEach((x, i) => {
      const li = el("li");
      li.setAttribute("role", "option");
      li.setAttribute("aria-selected", String(i === picker.index));
      li.append(el("b", null, "/" + x.shortcut), document.createTextNode(x.text));
      li.addEventListener("mousedown", (e) => { e.preventDefault(); picker.index = i; choose(); });
      ul.append(li);
    });
    ul.hidden = false;
  }
  function choose() {
    const x = picker.items[picker.index];
    if (!x) return;
    $("reply-text").value = x.text;
    closePicker();
    $("reply-text").focus();
  }
  let lastTypingSent = 0;
  $("reply-text").addEventListener("input", () => {
    const v = $("reply-text").value;
    if (v.startsWith("/") && !v.includes("\n")) openPicker(v.slice(1)); else closePicker();
    if (current && Date.now() - lastTypingSent > TYPING_SEND_MS) { lastTypingSent = Date.now(); send({ type: "typing", chat: current }); }
  });
  $("reply-text").addEventListener("keydown", (e) => {
    const open = !$("canned-picker").hidden && picker.items.length > 0;
    if (open && (e.key === "ArrowDown" || e.key === "ArrowUp")) {
      e.preventDefault();
      picker.index = (picker.index + (e.key === "ArrowDown" ? 1 : picker.items.length - 1)) % picker.items.length;
      openPicker($("reply-text").value.slice(1));
    } else if (open && (e.key === "Enter" || e.key === "Tab")) {
      e.preventDefault(); choose();
    } else if (e.key === "Escape") {
      closePicker();
    } else if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault(); $("reply").requestSubmit();
    }
  });
  $("reply").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("reply-text").value.trim();
    const c = current && chats.get(current);
    if (!text || !c || c.state !== "open") return;
    if (text.startsWith("/") && !text.includes(" ")) { openPicker(text.slice(1)); return; }
    $("reply-text").value = "";
    closePicker();
    sendLine(current, text);
  });

  // ---------- chat actions
  // Closing a chat that went to a person offers its learning sample (the
  // line the bot could not handle) for a label, right there.
  let closeSample = null;
  $("close-chat").addEventListener("click", async () => {
    if (!current) return;
    const chat = current;
    $("resolution").value = ""; $("close-label-intent").value = "";
    closeSample = null; $("close-label").hidden = true;
    $("close-dialog").showModal();
    const r = await api(`/console/api/samples?conversation=${encodeURIComponent(chat)}`).catch(() => null);
    if (!r || !r.ok || current !== chat) return;
    const q = await r.json();
    if (!q.samples.length) return;
    const dl = $("intent-names"); dl.replaceChildren();
    for (const i of q.intents) { const o = el("option"); o.value = i; o.textContent = intentWords(i); dl.append(o); }
    closeSample = q.samples[q.samples.length - 1];
    $("close-label-text").textContent = closeSample.text;
    $("close-label").hidden = false;
  });
  $("close-cancel").addEventListener("click", () => $("close-dialog").close());
  $("close-form").addEventListener("submit", async () => {
    if (current && !send({ type: "close", chat: current, resolution: $("resolution").value.trim() })) { toast("Not connected: the chat was not closed. Try again when connected."); return; }
    let value = $("close-label-intent").value.trim();
    if (value === "not_banking") value = "out_of_scope";
    if (closeSample && value) {
      const r = await api(`/console/api/samples/${encodeURIComponent(closeSample.id)}/label`, { method: "POST", body: JSON.stringify({ label: value }) });
      toast(r.ok ? `Labelled: ${value === "out_of_scope" ? "not a banking question" : intentWords(value.replace(/^new:/, ""))}` : await errorOf(r, "Could not save the label"), !r.ok);
    }
  });
  async function loadColleagues() {
    const r = await api("/console/api/colleagues");
    if (!r.ok) return;
    const sel = $("transfer-to"), keep = sel.value;
    sel.replaceChildren(new Option("Transfer to…", ""));
    for (const c of await r.json()) sel.append(new Option(`${c.name} (${c.free} free)`, c.id));
    sel.value = keep;
  }
  $("transfer-to").addEventListener("focus", loadColleagues);
  $("transfer-to").addEventListener("mousedown", loadColleagues);
  $("transfer").addEventListener("click", () => {
    const to = $("transfer-to").value;
    if (!to) { toast("Choose a colleague to transfer to."); return; }
    if (current && !send({ type: "transfer", chat: current, to })) toast("Not connected: try again when connected.");
  });
  $("requeue").addEventListener("click", () => {
    if (current && !send({ type: "transfer", chat: current, to: null })) toast("Not connected: try again when connected.");
  });
  $("presence").addEventListener("change", () => send({ type: "presence", state: $("presence").value }));
  document.addEventListener("keydown", (e) => {
    if (!me || !e.altKey) return;
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      const ids = orderedChats();
      if (!ids.length) return;
      e.preventDefault();
      const i = ids.indexOf(current);
      const next = e.key === "ArrowDown" ? (i + 1) % ids.length : (i <= 0 ? ids.length - 1 : i - 1);
      show("chats"); select(ids[next]);
    } else if (e.key.toLowerCase() === "w" && current && chats.get(current).state === "open") {
      e.preventDefault(); $("close-chat").click();
    }
  });

  // ---------- tickets (offline messages)
  let resolving = null;
  async function loadTickets() {
    const r = await api("/console/api/tickets").catch(() => null);
    if (!r || !r.ok) return;
    const list = await r.json();
    openTickets = list.filter((t) => t.state === "open").length;
    updateBadges();
    const tb = $("tickets");
    tb.replaceChildren();
    $("tickets-empty").hidden = list.length > 0;
    for (const t of list) {
      const tr = el("tr");
      const cell = (text, cls) => { const td = el("td", cls, text); tr.append(td); return td; };
      cell(dateTime(t.created_at)); cell(t.node_id); cell(t.name); cell(t.contact); cell(t.message, "msg");
      const who = t.state === "claimed" ? (t.agent_id === me.id ? "claimed by you" : "claimed") : t.state;
      cell(t.state === "resolved" && t.resolution ? `resolved: ${t.resolution}` : who, "state-" + t.state);
      const actions = el("div", "row");
      if (t.state === "open") actions.append(button("Claim", async () => {
        const r = await api(`/console/api/tickets/${encodeURIComponent(t.id)}/claim`, { method: "POST" });
        if (!r.ok) toast(await errorOf(r, "Could not claim it")); else toast("Claimed: it is yours to resolve.", false);
        loadTickets();
      }, "primary"));
      if (t.state === "claimed" && (t.agent_id === me.id || allowed("supervisor"))) actions.append(button("Resolve…", () => {
        resolving = t;
        $("resolve-summary").textContent = `${t.name} (${t.contact}): ${t.message}`;
        $("resolve-note").value = "";
        $("resolve-dialog").showModal();
      }, "primary"));
      actions.append(button("Transcript", async () => {
        const r = await api(`/console/api/tickets/${encodeURIComponent(t.id)}/transcript`);
        if (!r.ok) { toast(await errorOf(r, "No transcript")); return; }
        show("history"); showTranscript(await r.json());
      }));
      const td = el("td"); td.append(actions); tr.append(td);
      tb.append(tr);
    }
  }
  function button(text, onClick, cls) { const b = el("button", cls, text); b.type = "button"; b.addEventListener("click", onClick); return b; }
  $("resolve-cancel").addEventListener("click", () => $("resolve-dialog").close());
  $("resolve-form").addEventListener("submit", async (e) => {
    const note = $("resolve-note").value.trim();
    if (!note) { e.preventDefault(); $("resolve-note").focus(); return; }
    const t = resolving; resolving = null;
    if (!t) return;
    const r = await api(`/console/api/tickets/${encodeURIComponent(t.id)}/resolve`, { method: "POST", body: JSON.stringify({ note }) });
    if (!r.ok) toast(await errorOf(r, "Could not resolve it")); else toast("Resolved.", false);
    loadTickets();
  });

  // ---------- history
  function showTranscript(v) {
    $("transcript-title").textContent = `${label(v)} · ${dateTime(v.created_at)}`;
    const bits = [LANGS[v.lang] || v.lang, v.escalated ? `reached a person${v.agent_name ? " (" + v.agent_name + ")" : ""}` : "bot only"];
    if (v.resolution) bits.push(`outcome: ${v.resolution}`);
    if (v.rating) bits.push(`rated ${v.rating}/5`);
    $("transcript-meta").textContent = bits.join(" · ");
    $("transcript").replaceChildren(...v.lines.map(lineEl));
  }
  $("search").addEventListener("submit", async (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    const put = (k, v) => { if (v) p.set(k, v); };
    put("q", $("search-q").value.trim());
    put("node", $("search-node").value.trim());
    put("intent", $("search-intent").value.trim());
    put("agent", $("search-agent").value.trim());
    put("escalated", $("search-escalated").value);
    const day = (id, plus) => { const v = $(id).value; return v ? String(Date.parse(v + "T00:00:00") + plus) : ""; };
    put("since", day("search-since", 0));
    put("until", day("search-until", 86400000));
    const r = await api("/console/api/chats?" + p.toString());
    if (!r.ok) { toast(await errorOf(r, "Search failed")); return; }
    const list = await r.json();
    const ul = $("results"); ul.replaceChildren();
    $("results-empty").hidden = list.length > 0;
    for (const c of list) {
      const b = el("button"); b.type = "button";
      b.append(el("strong", null, `${label(c)} · ${dateTime(c.created_at)}`));
      b.append(el("span", "meta", `${c.escalated ? (c.agent_name ? "with " + c.agent_name : c.state) : "bot only"}${c.rating ? " · rated " + c.rating + "/5" : ""}`));
      if (c.last_line) b.append(el("span", "preview", `${whoOf(c.last_line)}: ${c.last_line.text}`));
      b.addEventListener("click", async () => {
        const r = await api("/console/api/chats/" + encodeURIComponent(c.id));
        if (!r.ok) { toast(await errorOf(r, "Could not open it")); return; }
        showTranscript(await r.json());
      });
      const li = el("li"); li.append(b); ul.append(li);
    }
  });

  // ---------- labels: the learning loop's queue
  const REASON_WORDS = {
    out_of_scope: "judged not a banking question", low_confidence: "not sure", rephrase: "asked to rephrase",
    escalated: "went to a person", rated_low: "rated low", cancelled: "the visitor cancelled what the bot started",
  };
  async function saveLabel(sample, value, li) {
    const r = await api(`/console/api/samples/${encodeURIComponent(sample.id)}/label`, { method: "POST", body: JSON.stringify({ label: value }) });
    if (!r.ok) { toast(await errorOf(r, "Could not save the label")); return; }
    li.remove();
    toast(`Labelled: ${value === "out_of_scope" ? "not a banking question" : intentWords(value.replace(/^new:/, ""))}`, false);
    if (!$("label-list").children.length) loadLabels();
  }
  async function loadLabels() {
    const r = await api("/console/api/samples").catch(() => null);
    if (!r || !r.ok) return;
    const q = await r.json();
    const dl = $("intent-names"); dl.replaceChildren();
    for (const i of q.intents) { const o = el("option"); o.value = i; o.textContent = intentWords(i); dl.append(o); }
    const ul = $("label-list"); ul.replaceChildren();
    if (!q.samples.length) ul.append(el("li", "empty", "Nothing to label: every line the branches sent up has a label."));
    for (const smp of q.samples) {
      const li = el("li", "sample");
      li.append(el("p", "said", smp.text));
      li.append(el("p", "meta", `${smp.lang === "zh" ? "中文" : "English"} · ${REASON_WORDS[smp.reason] || smp.reason} · ${smp.node_id} · model ${smp.model_version} · ${new Date(smp.at).toLocaleString()}`));
      const row = el("div", "guesses");
      // "Not banking" has its own button (0).
      (smp.guesses || []).filter((g) => g.label !== "out_of_scope").forEach((g, i) => {
        const b = button(`${i + 1}. ${intentWords(g.label)} (${Math.round(g.score * 100)} %)`, () => saveLabel(smp, g.label, li));
        b.dataset.key = String(i + 1);
        row.append(b);
      });
      const oos = button("0. Not a banking question", () => saveLabel(smp, "out_of_scope", li));
      oos.dataset.key = "0";
      row.append(oos);
      const context = el("ol", "lines context"); context.hidden = true;
      const more = button("Conversation", async () => {
        if (!context.hidden) { context.hidden = true; more.setAttribute("aria-expanded", "false"); return; }
        const c = await api(`/console/api/samples/${encodeURIComponent(smp.id)}/conversation`);
        if (!c.ok) { toast(await errorOf(c, "The conversation is not available")); return; }
        const v = await c.json();
        context.replaceChildren(...v.lines.map((l) => { const x = lineEl(l); if (l.text === smp.text) x.classList.add("this"); return x; }));
        context.hidden = false; more.setAttribute("aria-expanded", "true");
      });
      more.setAttribute("aria-expanded", "false");
      const pick = el("input"); pick.setAttribute("list", "intent-names"); pick.placeholder = "another intent, or new:name";
      pick.setAttribute("aria-label", "Intent"); pick.maxLength = 68;
      const save = button("Label", () => { if (pick.value.trim()) saveLabel(smp, pick.value.trim(), li); }, "primary");
      pick.addEventListener("keydown", (e) => { if (e.key === "Enter") save.click(); });
      row.append(pick, save, more);
      li.append(row, context);
      ul.append(li);
    }
  }
  async function loadAnswers() {
    if (!allowed("supervisor")) return;
    const r = await api("/console/api/answers").catch(() => null);
    if (!r || !r.ok) return;
    const v = await r.json();
    const dl = $("new-intents"); dl.replaceChildren();
    for (const i of v.unanswered) { const o = el("option"); o.value = i; dl.append(o); }
    const miss = $("answer-missing");
    miss.hidden = !v.unanswered.length;
    miss.textContent = `Labelled as new, no answer yet: ${v.unanswered.join(", ")}`;
    const ul = $("answer-list"); ul.replaceChildren();
    for (const a of v.answers) {
      const li = el("li", "sample answer");
      li.append(el("p", "said", a.intent));
      li.append(el("p", null, a.en), el("p", null, a.zh));
      const q = a.quick_replies || { en: [], zh: [] };
      if (q.en.length || q.zh.length) li.append(el("p", "meta", `Quick replies: ${[...q.en, ...q.zh].join(" · ")}`));
      const row = el("div", "guesses");
      row.append(button("Edit", () => {
        $("answer-intent").value = a.intent; $("answer-en").value = a.en; $("answer-zh").value = a.zh;
        $("answer-quick-en").value = q.en.join("\n"); $("answer-quick-zh").value = q.zh.join("\n");
        $("answer-en").focus();
      }));
      row.append(button("Delete", async () => {
        const d = await api(`/console/api/answers/${encodeURIComponent(a.intent)}`, { method: "DELETE" });
        if (!d.ok) { toast(await errorOf(d, "Could not delete")); return; }
        loadAnswers();
      }, "danger"));
      li.append(row);
      ul.append(li);
    }
  }
  $("answer-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const intent = $("answer-intent").value.trim().replace(/^new:/, "");
    const lines = (id) => $(id).value.split("\n").map((x) => x.trim()).filter(Boolean);
    const quick_replies = { en: lines("answer-quick-en"), zh: lines("answer-quick-zh") };
    const r = await api(`/console/api/answers/${encodeURIComponent(intent)}`, { method: "PUT", body: JSON.stringify({ en: $("answer-en").value, zh: $("answer-zh").value, quick_replies }) });
    if (!r.ok) { toast(await errorOf(r, "Could not save the answer")); return; }
    toast(`Answer saved for ${intent}; it ships with the next release or trained model`, false);
    $("answer-form").reset();
    loadAnswers();
  });
  // ---------- suggested intents (supervisors)
  let suggestPoll = null;
  function groupingWords(g) {
    if (g.state === "running") return "Grouping the questions…";
    if (g.state === "failed") return `The last grouping failed: ${g.detail}`;
    if (g.state === "done") {
      const at = new Date(g.finished_at).toLocaleString();
      return g.detail ? `${g.detail} (${at})` : `Grouped ${g.questions} questions at ${at}: ${g.groups} suggestion${g.groups === 1 ? "" : "s"}`;
    }
    return "";
  }
  async function loadSuggestions() {
    if (!allowed("supervisor")) return;
    const r = await api("/console/api/suggestions").catch(() => null);
    if (!r || !r.ok) return;
    const v = await r.json();
    $("suggest-status").textContent = groupingWords(v.grouping);
    $("suggest-refresh").disabled = v.grouping.state === "running";
    clearTimeout(suggestPoll);
    if (v.grouping.state === "running") suggestPoll = setTimeout(() => { if (view === "labels") loadSuggestions(); }, 1500);
    const ul = $("suggest-list"); ul.replaceChildren();
    const open = v.suggestions.filter((x) => x.state === "open");
    if (!open.length) ul.append(el("li", "empty", "No suggestions: group the questions to look for some."));
    for (const sg of open) {
      const li = el("li", "sample suggestion");
      const langs = Object.entries(sg.languages).map(([l, n]) => `${l === "zh" ? "中文" : "English"} ${n}`).join(", ");
      li.append(el("p", "said", `${sg.size} question${sg.size === 1 ? "" : "s"} like these`));
      const where = sg.branches.map((b) => `${b.name || b.node_id} ${b.count}`).join(", ");
      li.append(el("p", "meta", `${langs} · branches: ${where}${sg.usual_guess ? ` · the bot usually guessed “${sg.usual_guess === "out_of_scope" ? "not a banking question" : intentWords(sg.usual_guess)}”` : ""}`));
      const ex = el("ul", "examples");
      for (const e of sg.examples) ex.append(el("li", null, e.text));
      li.append(ex);
      const form = el("form"); form.hidden = true;
      const field = (label, input) => { const l = el("label", null, label + " "); l.append(input); return l; };
      const intent = el("input"); intent.setAttribute("list", "intent-names"); intent.required = true; intent.maxLength = 68;
      intent.placeholder = "new:name, or an intent the bot knows";
      const en = el("textarea"); en.rows = 2; en.maxLength = 2000;
      const zh = el("textarea"); zh.rows = 2; zh.maxLength = 2000;
      const save = el("button", "primary", "Make the intent"); save.type = "submit";
      form.append(field("Intent", intent), field("English answer", en), field("Chinese answer", zh),
        el("p", "meta", "The answers are needed for a new intent that has none yet; they ship with the next trained model."), save);
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        const body = { intent: intent.value.trim() };
        if (en.value.trim() || zh.value.trim()) { body.en = en.value; body.zh = zh.value; }
        const x = await api(`/console/api/suggestions/${encodeURIComponent(sg.id)}/accept`, { method: "POST", body: JSON.stringify(body) });
        if (!x.ok) { toast(await errorOf(x, "Could not make the intent")); return; }
        const done = await x.json();
        toast(`${done.labelled} question${done.labelled === 1 ? "" : "s"} labelled ${intentWords(body.intent.replace(/^new:/, ""))}`, false);
        loadSuggestions(); loadLabels(); loadAnswers();
      });
      const row = el("div", "guesses");
      const make = button("Make an intent…", () => { form.hidden = !form.hidden; if (!form.hidden) intent.focus(); }, "primary");
      row.append(make, button("Dismiss", async () => {
        const x = await api(`/console/api/suggestions/${encodeURIComponent(sg.id)}/dismiss`, { method: "POST" });
        if (!x.ok) { toast(await errorOf(x, "Could not dismiss")); return; }
        toast("Dismissed: these questions are not suggested again", false);
        loadSuggestions();
      }));
      li.append(row, form);
      ul.append(li);
    }
  }
  $("suggest-refresh").addEventListener("click", async () => {
    const r = await api("/console/api/suggestions/refresh", { method: "POST" });
    if (!r.ok) { toast(await errorOf(r, "Could not group the questions")); return; }
    loadSuggestions();
  });
  $("answer-release").addEventListener("click", async () => {
    const r = await api("/console/api/kb/releases", { method: "POST" });
    if (!r.ok) { toast(await errorOf(r, "Could not release the answers")); return; }
    const t = await r.json();
    toast(`Answers released as ${t.version}: approve its rollout on the dashboard`, false);
  });
  async function loadReview() {
    if (!allowed("supervisor")) return;
    const r = await api("/console/api/review").catch(() => null);
    if (!r || !r.ok) return;
    const rows = await r.json();
    const ul = $("review-list"); ul.replaceChildren();
    if (!rows.length) ul.append(el("li", "empty", "Nothing to review."));
    for (const smp of rows) {
      const li = el("li", "sample review");
      li.append(el("p", "said", smp.text));
      const given = smp.label === "out_of_scope" ? "not a banking question" : intentWords(smp.label.replace(/^new:/, ""));
      li.append(el("p", "meta", `labelled “${given}” by ${smp.labelled_by_name || smp.labelled_by} · ${smp.lang === "zh" ? "中文" : "English"} · ${smp.node_id}`));
      const row = el("div", "guesses");
      const review = async (label) => {
        const body = label ? { label } : {};
        const x = await api(`/console/api/samples/${encodeURIComponent(smp.id)}/review`, { method: "POST", body: JSON.stringify(body) });
        if (!x.ok) { toast(await errorOf(x, "Could not save the review")); return; }
        li.remove();
        toast(label ? `Changed to: ${label === "out_of_scope" ? "not a banking question" : intentWords(label.replace(/^new:/, ""))}` : "Confirmed", false);
        if (!$("review-list").children.length) loadReview();
      };
      const pick = el("input"); pick.setAttribute("list", "intent-names"); pick.placeholder = "what it should be";
      pick.setAttribute("aria-label", "Correct intent"); pick.maxLength = 68;
      row.append(button("Right", () => review(null), "primary"), pick, button("Change", () => { if (pick.value.trim()) review(pick.value.trim()); }));
      li.append(row);
      ul.append(li);
    }
  }
  document.addEventListener("keydown", (e) => {
    if (view !== "labels" || e.target.closest("input, textarea, select") || e.altKey || e.ctrlKey || e.metaKey) return;
    const first = $("label-list").querySelector("li.sample");
    const b = first && first.querySelector(`button[data-key="${e.key}"]`);
    if (b) { e.preventDefault(); b.click(); }
  });

  // ---------- dashboard
  function chart(svg, days, key, max, decimals) {
    const NS = "http://www.w3.org/2000/svg";
    const W = 360, H = 160, L = 34, R = 8, T = 12, B = 24;
    const mk = (tag, attrs, text) => { const n = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v)); if (text != null) n.textContent = text; svg.append(n); return n; };
    svg.replaceChildren();
    const DAY = 86400000, today = Math.floor(Date.now() / DAY) * DAY, start = today - 29 * DAY;
    const pw = W - L - R, ph = H - T - B, slot = pw / 30;
    const y = (v) => T + ph - (v / max) * ph;
    for (const f of [0, 0.5, 1]) {
      mk("line", { x1: L, x2: W - R, y1: y(max * f), y2: y(max * f), class: f === 0 ? "axis" : "grid" });
      mk("text", { x: L - 4, y: y(max * f) + 3, "text-anchor": "end" }, (max * f).toFixed(decimals));
    }
    mk("line", { x1: L, x2: L, y1: T, y2: T + ph, class: "axis" });
    for (const i of [0, 15, 29]) {
      const d = new Date(start + i * DAY);
      // The last date ends at the plot's right edge so it is never clipped.
      const anchor = i === 29 ? { x: W - R, a: "end" } : { x: L + i * slot + slot / 2, a: "middle" };
      mk("text", { x: anchor.x, y: H - 6, "text-anchor": anchor.a }, d.toLocaleDateString([], { month: "short", day: "numeric" }));
    }
    const points = days.filter((d) => d[key] != null && d.day >= start);
    if (!points.length) { mk("text", { x: L + pw / 2, y: T + ph / 2, "text-anchor": "middle" }, "No data yet"); return; }
    for (const d of points) {
      const i = Math.round((d.day - start) / DAY), v = Math.max(0, d[key]);
      const x = L + i * slot + 1, h = Math.max(1, T + ph - y(Math.min(v, max)));
      const r = mk("rect", { x, y: T + ph - h, width: Math.max(2, slot - 2), height: h, class: "bar" });
      const title = document.createElementNS(NS, "title");
      title.textContent = `${new Date(d.day).toLocaleDateString()}: ${v.toFixed(decimals)} (${d.chats} chats)`;
      r.append(title);
      mk("text", { x: x + slot / 2 - 1, y: T + ph - h - 3, "text-anchor": "middle", class: "value" }, v.toFixed(decimals));
    }
  }
  async function refreshDashboard() {
    const r = await api("/console/api/dashboard").catch(() => null);
    if (!r || !r.ok) return;
    const d = await r.json();
    $("d-waiting").textContent = String(d.live.waiting);
    $("d-away").textContent = String(d.live.waiting_away);
    $("d-wait").textContent = ago(Date.now() - d.live.longest_wait_ms);
    $("d-online").textContent = String(d.nodes_online);
    $("d-offline").textContent = String(d.nodes_offline);
    const tb = $("d-agents"); tb.replaceChildren();
    for (const a of d.live.agents) {
      const tr = el("tr");
      const status = a.presence === "offline" ? "offline" : a.connected ? a.presence : `${a.presence}, reconnecting`;
      for (const v of [a.name || a.id, status, `${a.chats} of ${a.capacity}`]) tr.append(el("td", null, v));
      tb.append(tr);
    }
    if (!d.live.agents.length) { const tr = el("tr"); const td = el("td", "empty", "No agent has logged in since the controller started."); td.colSpan = 3; tr.append(td); tb.append(tr); }
    const rb = $("d-rollouts"); rb.replaceChildren();
    for (const r of d.rollouts) {
      const tr = el("tr");
      const phase = r.detail ? `${r.phase}: ${r.detail}` : r.phase;
      let shadow = "no shadow phase";
      if (r.shadow) {
        const s = r.shadow;
        shadow = s.turns
          ? `agreement ${(s.agreement * 100).toFixed(1)} % over ${s.turns} turns (needs ${(s.min_agreement * 100).toFixed(0)} %) · ${s.oos_disagreements} out-of-scope disagreements · ${Math.round(s.candidate_us)} µs vs ${Math.round(s.active_us)} µs a turn`
          : "no turns compared yet";
        if (s.until) shadow += ` · until ${new Date(s.until).toLocaleTimeString()}`;
      }
      for (const v of [`${r.version}`, phase, `${r.updated} of ${r.total}`, shadow]) tr.append(el("td", null, v));
      rb.append(tr);
    }
    if (!d.rollouts.length) { const tr = el("tr"); const td = el("td", "empty", "No model rollout yet."); td.colSpan = 4; tr.append(td); rb.append(tr); }
    await renderTrainings();
    const frt = d.days.map((x) => x.first_response_s).filter((x) => x != null);
    const top = Math.max(10, ...frt);
    chart($("d-frt"), d.days, "first_response_s", Math.ceil(top / 10) * 10, 0);
    chart($("d-csat"), d.days, "csat", 5, 1);
  }

  // ---------- training runs (supervisors, on the dashboard)
  const TRAINING_WORDS = {
    running: "training…", failed: "failed", refused: "refused by the checks",
    awaiting_approval: "passed the checks, waiting for approval", promoted: "approved, rolling out",
  };
  const pct = (f) => `${(f.value * 100).toFixed(1)} %`;
  const CHANGE_WORDS = { added: "new", changed: "changed", removed: "back to the built-in answer" };
  function trainingFigures(t) {
    if (t.kind === "knowledge_base") {
      return (t.report.answers || []).map((c) => `${c.intent}: ${CHANGE_WORDS[c.change] || c.change}`).join(" · ");
    }
    const v = t.report && t.report.validation;
    if (!v) return t.state === "running" ? "the trainer is running" : "—";
    const parts = [];
    for (const [lang, name] of [["en", "English"], ["zh", "Chinese"]]) {
      const b = v.baseline.languages[lang], c = v.candidate.languages[lang];
      if (b && c) parts.push(`${name} ${pct(b)} → ${pct(c)}`);
    }
    if (v.baseline.oos_recall && v.candidate.oos_recall) parts.push(`out of scope ${pct(v.baseline.oos_recall)} → ${pct(v.candidate.oos_recall)}`);
    const h = t.report.held_out_labels;
    for (const [lang, c] of Object.entries((h && h.candidate.languages) || {})) {
      const b = h.baseline.languages[lang];
      parts.push(`held-out labels (${lang}, ${c.rows}) ${b ? pct(b) : "—"} → ${pct(c)}`);
    }
    return parts.join(" · ");
  }
  async function renderTrainings() {
    const r = await api("/console/api/trainings").catch(() => null);
    if (!r || !r.ok) return;
    const runs = await r.json();
    const tb = $("d-trainings"); tb.replaceChildren();
    for (const t of runs) {
      const tr = el("tr");
      let state = TRAINING_WORDS[t.state] || t.state;
      if (t.detail) state += `: ${t.detail}`;
      if (t.rollout_id) state += ` (${t.rollout_id})`;
      const kb = t.kind === "knowledge_base";
      const what = kb ? `${t.version} (answers for ${t.baseline_version})` : `${t.version} (from ${t.baseline_version})`;
      const labels = kb ? "knowledge-base release" : `${t.trained_labels} trained · ${t.held_out_labels} held out`;
      for (const v of [what, state, labels, trainingFigures(t)]) tr.append(el("td", null, v));
      const act = el("td");
      if (t.state === "awaiting_approval") {
        act.append(button("Approve rollout", async () => {
          const a = await api(`/console/api/trainings/${encodeURIComponent(t.id)}/approve`, { method: "POST" });
          if (!a.ok) { toast(await errorOf(a, "Could not approve")); return; }
          toast(kb ? `Answers ${t.version} are rolling out` : `Model ${t.version} is rolling out (shadow first)`, false);
          refreshDashboard();
        }, "primary"));
      }
      tr.append(act);
      tb.append(tr);
    }
    if (!runs.length) { const tr = el("tr"); const td = el("td", "empty", "No training run yet. Label what the bot did not understand, then train."); td.colSpan = 5; tr.append(td); tb.append(tr); }
    $("d-train").disabled = runs.some((t) => t.state === "running");
  }
  $("d-train").addEventListener("click", async () => {
    const r = await api("/console/api/trainings", { method: "POST" });
    if (!r.ok) { toast(await errorOf(r, "Could not start training")); return; }
    toast("Training started; this takes a few minutes", false);
    refreshDashboard();
  });

  // ---------- settings
  async function loadCanned() {
    const r = await api("/console/api/canned").catch(() => null);
    if (r && r.ok) canned = await r.json();
  }
  async function renderCanned() {
    await loadCanned();
    const ul = $("canned-list"); ul.replaceChildren();
    if (!canned.length) ul.append(el("li", "empty", "No canned responses yet."));
    for (const c of canned) {
      const li = el("li");
      li.append(el("b", null, `${c.lang} /${c.shortcut}`), el("span", null, c.text));
      li.append(button("Delete", async () => {
        const r = await api(`/console/api/canned/${c.id}`, { method: "DELETE" });
        if (!r.ok) toast(await errorOf(r, "Could not delete")); renderCanned();
      }));
      ul.append(li);
    }
  }
  $("canned-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const r = await api("/console/api/canned", { method: "POST", body: JSON.stringify({ lang: $("canned-lang").value, shortcut: $("canned-shortcut").value.trim(), text: $("canned-text").value.trim() }) });
    if (!r.ok) { toast(await errorOf(r, "Could not save")); return; }
    $("canned-shortcut").value = ""; $("canned-text").value = "";
    toast("Saved.", false);
    renderCanned();
  });
  async function renderAgents() {
    const r = await api("/console/api/agents");
    if (!r.ok) return;
    const ul = $("agent-list"); ul.replaceChildren();
    for (const a of await r.json()) {
      const li = el("li");
      li.append(el("span", null, `${a.display_name} (${a.username}, ${a.role}, ${a.languages.join("/")}, up to ${a.capacity} chats${a.disabled ? ", disabled" : ""})`));
      if (!a.disabled && a.id !== me.id) li.append(button("Disable", async () => {
        const r = await api(`/console/api/agents/${encodeURIComponent(a.id)}/disable`, { method: "POST" });
        if (!r.ok) toast(await errorOf(r, "Could not disable")); renderAgents();
      }, "danger"));
      ul.append(li);
    }
  }
  $("agent-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = {
      username: $("new-username").value.trim(), display_name: $("new-name").value.trim(), role: $("new-role").value,
      password: $("new-password").value, languages: $("new-languages").value.split(",").map((s) => s.trim()).filter(Boolean),
      capacity: Number($("new-capacity").value),
    };
    const r = await api("/console/api/agents", { method: "POST", body: JSON.stringify(body) });
    if (!r.ok) { toast(await errorOf(r, "Could not create the agent")); return; }
    $("new-password").value = "";
    toast(`Created ${body.display_name}.`, false);
    renderAgents();
  });

  api("/console/api/me").then(async (r) => { if (r.ok) showApp(await r.json()); else showLogin(); }).catch(showLogin);
})();
