// EdgeDesk kiosk page: one WebSocket to /ws speaking the JSON protocol in
// common/src/chat.rs. Every chat text is inserted with textContent, never as HTML.
(() => {
  "use strict";
  const PROTOCOL = 1;
  const KEY = "edgedesk.session";
  const LANG_KEY = "edgedesk.lang";
  const T = {
    en: { title: "Branch assistant", connecting: "Connecting…", online: "Online — answers in seconds", offline: "Reconnecting…",
          send: "Send", end: "End chat", label: "Your message", placeholder: "Type your question…", skip: "Skip to message box",
          hint: "Press Enter to send. You can ask for a person at any time.", you: "You", bot: "Assistant", agent: "Colleague",
          reconnecting: "Connection lost. Reconnecting… your messages will be sent when we're back.",
          takenOver: "This chat was opened in another window.", resume: "Continue here", ended: "Chat ended. Start typing to begin a new one.",
          failed: "Not sent" },
    zh: { title: "网点智能助手", connecting: "正在连接…", online: "在线 — 即时回复", offline: "正在重新连接…",
          send: "发送", end: "结束对话", label: "您的消息", placeholder: "请输入您的问题…", skip: "跳到输入框",
          hint: "按回车发送。您可以随时要求转人工。", you: "您", bot: "助手", agent: "工作人员",
          reconnecting: "连接已断开，正在重新连接…恢复后将自动发送您的消息。",
          takenOver: "此对话已在其他窗口打开。", resume: "在此继续", ended: "对话已结束。输入内容即可开始新的对话。",
          failed: "未发送" },
  };
  const $ = (id) => document.getElementById(id);
  const log = $("log"), quick = $("quick"), input = $("input"), form = $("composer");
  const statusEl = $("status"), banner = $("banner");
  let lang = localStorage.getItem(LANG_KEY) === "zh" ? "zh" : "en";
  let ws = null, ready = false, retry = 0, stopped = false, typingEl = null, seq = 0;
  const pending = new Map(); // client_id -> {text, payload, el, sent}

  function t(k) { return T[lang][k] || k; }

  function applyLang() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
    document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.i18nPlaceholder); });
    $("lang-en").setAttribute("aria-pressed", String(lang === "en"));
    $("lang-zh").setAttribute("aria-pressed", String(lang === "zh"));
    statusEl.textContent = ready ? t("online") : t("connecting");
  }

  function scroll() { log.scrollTop = log.scrollHeight; }

  function addMessage(from, text, opts = {}) {
    const el = document.createElement("div");
    el.className = "msg " + from + (opts.pending ? " pending" : "");
    if (opts.id != null) el.dataset.id = String(opts.id);
    const who = document.createElement("span");
    who.className = "sr-only";
    who.textContent = (from === "visitor" ? t("you") : from === "agent" ? t("agent") : t("bot")) + ": ";
    const body = document.createElement("span");
    body.textContent = text;
    const meta = document.createElement("span");
    meta.className = "meta";
    const at = opts.at ? new Date(opts.at) : new Date();
    meta.textContent = at.toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB", { hour: "2-digit", minute: "2-digit" });
    el.append(who, body, meta);
    log.insertBefore(el, typingEl && typingEl.parentNode === log ? typingEl : null);
    scroll();
    return el;
  }

  function addNote(text, isError) {
    const el = document.createElement("p");
    el.className = "note" + (isError ? " error" : "");
    el.textContent = text;
    log.appendChild(el);
    scroll();
  }

  function showQuick(replies) {
    quick.replaceChildren();
    (replies || []).forEach((q) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = q.label;
      b.addEventListener("click", () => sendText(q.label, q.payload || undefined));
      quick.appendChild(b);
    });
  }

  function setTyping(on) {
    if (on && !typingEl) {
      typingEl = document.createElement("div");
      typingEl.className = "typing";
      typingEl.setAttribute("aria-hidden", "true");
      typingEl.append(document.createElement("span"), document.createElement("span"), document.createElement("span"));
      log.appendChild(typingEl);
      scroll();
    } else if (!on && typingEl) {
      typingEl.remove();
      typingEl = null;
    }
  }

  function setBanner(text) {
    if (text) { banner.textContent = text; banner.hidden = false; } else { banner.hidden = true; banner.textContent = ""; }
  }

  function frame(obj) {
    if (ws && ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify(obj)); return true; }
    return false;
  }

  function sendText(text, payload) {
    text = text.trim();
    if (!text) return;
    showQuick([]);
    const id = "c" + Date.now().toString(36) + (seq++);
    const el = addMessage("visitor", text, { pending: true });
    const item = { text, payload, el, sent: false };
    pending.set(id, item);
    if (ready) { item.sent = frame({ type: "message", text, client_id: id, payload }); setTyping(item.sent); }
  }

  function flushPending() {
    for (const [id, item] of pending) {
      if (!item.sent) { item.sent = frame({ type: "message", text: item.text, client_id: id, payload: item.payload }); }
    }
    if (pending.size) setTyping(true);
  }

  function onFrame(f) {
    switch (f.type) {
      case "welcome": {
        localStorage.setItem(KEY, f.session);
        ready = true; retry = 0;
        setBanner(""); statusEl.textContent = t("online");
        // Re-render the stored conversation, then keep what is still unsent.
        const keep = [...pending.values()].map((p) => p.el);
        log.replaceChildren();
        let lastQuick = [];
        for (const h of f.history) {
          addMessage(h.from, h.text, { id: h.id, at: h.at });
          lastQuick = h.from === "visitor" ? [] : (h.quick_replies || []);
        }
        // Sent but unacknowledged messages: if the last stored visitor line
        // matches, it arrived; otherwise send it again.
        const storedVisitor = f.history.filter((h) => h.from === "visitor").map((h) => h.text);
        for (const [id, item] of pending) {
          if (item.sent && storedVisitor.length && storedVisitor[storedVisitor.length - 1] === item.text) { pending.delete(id); continue; }
          item.sent = false;
        }
        keep.forEach((el) => { if ([...pending.values()].some((p) => p.el === el)) log.appendChild(el); });
        showQuick(lastQuick);
        if (f.lang !== lang && !localStorage.getItem(LANG_KEY)) { lang = f.lang; applyLang(); }
        flushPending();
        break;
      }
      case "ack": {
        const item = f.client_id && pending.get(f.client_id);
        if (item) { item.el.classList.remove("pending"); item.el.dataset.id = String(f.id); pending.delete(f.client_id); }
        break;
      }
      case "reply":
        if (!pending.size) setTyping(false);
        addMessage(f.from, f.text, { id: f.id });
        showQuick(f.quick_replies);
        if (f.state === "ended") addNote(t("ended"));
        break;
      case "typing":
        setTyping(true);
        break;
      case "notice":
        addNote(f.text);
        break;
      case "error":
        setTyping(false);
        if (f.code !== "unknown_session") addNote(f.message, true);
        for (const [id, item] of pending) { if (item.sent) { item.el.classList.add("failed"); item.el.classList.remove("pending"); pending.delete(id); } }
        break;
      default:
        break;
    }
  }

  function connect() {
    if (stopped) return;
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
    ws = new WebSocket(url);
    ws.addEventListener("open", () => {
      const session = localStorage.getItem(KEY);
      ws.send(JSON.stringify(session ? { type: "hello", v: PROTOCOL, session, lang } : { type: "hello", v: PROTOCOL, lang }));
    });
    ws.addEventListener("message", (ev) => {
      let f;
      try { f = JSON.parse(ev.data); } catch { return; }
      onFrame(f);
    });
    ws.addEventListener("close", (ev) => {
      ready = false;
      setTyping(false);
      if (ev.code === 4001) {
        stopped = true;
        setBanner(t("takenOver"));
        const b = document.createElement("button");
        b.type = "button"; b.textContent = t("resume");
        b.addEventListener("click", () => { stopped = false; setBanner(""); connect(); });
        banner.appendChild(document.createTextNode(" "));
        banner.appendChild(b);
        return;
      }
      statusEl.textContent = t("offline");
      setBanner(t("reconnecting"));
      for (const item of pending.values()) item.sent = false;
      const delay = Math.min(10000, 500 * 2 ** retry++);
      setTimeout(connect, delay);
    });
  }

  let lastTyping = 0;
  input.addEventListener("input", () => {
    // Tell a human agent the visitor is typing (at most every 2 s).
    const now = Date.now();
    if (ready && now - lastTyping > 2000) { lastTyping = now; frame({ type: "typing" }); }
  });

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value;
    input.value = "";
    sendText(text);
    input.focus();
  });
  document.querySelectorAll(".lang button").forEach((b) => b.addEventListener("click", () => {
    lang = b.dataset.lang;
    localStorage.setItem(LANG_KEY, lang);
    applyLang();
    frame({ type: "set_lang", lang });
  }));
  $("end").addEventListener("click", () => {
    // Shared kiosk: end the conversation and forget the session for the next visitor.
    frame({ type: "message", text: t("end"), payload: "/end" });
    localStorage.removeItem(KEY);
    pending.clear();
    setTimeout(() => { if (ws) ws.close(); log.replaceChildren(); showQuick([]); }, 300);
  });

  applyLang();
  connect();
})();
