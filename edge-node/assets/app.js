// EdgeDesk kiosk page: one WebSocket to /ws speaking the JSON protocol in
// common/src/chat.rs. Every chat text is inserted with textContent, never as HTML.
(() => {
  "use strict";
  const PROTOCOL = 1;
  const KEY = "edgedesk.session";
  const LANG_KEY = "edgedesk.lang"; // set only when the visitor picks a language
  const AGENT_TYPING_MS = 6000; // the agent's typing dots fade without news
  const COUNTDOWN_SECS = 20; // the idle reset warns at most this long before
  const T = {
    en: { title: "Branch assistant", connecting: "Connecting…", online: "Online — answers in seconds", offline: "Reconnecting…",
          send: "Send", end: "End chat", label: "Your message", placeholder: "Type your question…", skip: "Skip to message box",
          hint: "Press Enter to send. You can ask for a person at any time.", you: "You", bot: "Assistant", agent: "Colleague",
          reconnecting: "Connection lost. Reconnecting… your messages will be sent when we're back.",
          takenOver: "This chat was opened in another window.", resume: "Continue here", ended: "Chat ended. Start typing to begin a new one.",
          failed: "Not sent", retry: "Try again", more: "Earlier messages are not shown.",
          idle: (s) => `Are you still there? For your privacy this chat will be cleared in ${s} s.`, stay: "I'm still here",
          starting: "Starting a new chat…",
          rate_limited: "You are sending messages quickly. Wait a moment, then tap Try again.",
          busy: "The assistant is busy. Tap Try again in a moment." },
    zh: { title: "网点智能助手", connecting: "正在连接…", online: "在线 — 即时回复", offline: "正在重新连接…",
          send: "发送", end: "结束对话", label: "您的消息", placeholder: "请输入您的问题…", skip: "跳到输入框",
          hint: "按回车发送。您可以随时要求转人工。", you: "您", bot: "助手", agent: "工作人员",
          reconnecting: "连接已断开，正在重新连接…恢复后将自动发送您的消息。",
          takenOver: "此对话已在其他窗口打开。", resume: "在此继续", ended: "对话已结束。输入内容即可开始新的对话。",
          failed: "未发送", retry: "重新发送", more: "更早的消息未显示。",
          idle: (s) => `您还在吗？为保护您的隐私，本对话将在 ${s} 秒后清除。`, stay: "我还在",
          starting: "正在开始新的对话…",
          rate_limited: "您发送得太快了，请稍等片刻再点“重新发送”。",
          busy: "助手正忙，请稍后点“重新发送”。" },
  };
  const $ = (id) => document.getElementById(id);
  const log = $("log"), quick = $("quick"), input = $("input"), form = $("composer");
  const statusEl = $("status"), banner = $("banner");
  let lang = localStorage.getItem(LANG_KEY) === "zh" ? "zh" : "en";
  let ws = null, ready = false, retry = 0, stopped = false, typingEl = null, seq = 0;
  let state = "bot"; // the conversation's ChatState
  let idleResetSecs = 0, idleTimer = null, countdownTimer = null, talked = false;
  let restarting = false; // frames of the old conversation are ignored until the next welcome
  let agentTypingTimer = null, queueNote = null;
  const pending = new Map(); // client_id -> {text, payload, el, sent}

  function t(k, ...args) { const v = T[lang][k]; return typeof v === "function" ? v(...args) : (v || k); }
  const withPerson = () => state === "with_agent" || state === "waiting_for_agent";

  function applyLang() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
    document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.i18nPlaceholder); });
    $("lang-en").setAttribute("aria-pressed", String(lang === "en"));
    $("lang-zh").setAttribute("aria-pressed", String(lang === "zh"));
    statusEl.textContent = ready ? t("online") : t("connecting");
  }

  // The newest line stays in view, also once the quick replies below it
  // have taken their room.
  function scroll() { log.scrollTop = log.scrollHeight; requestAnimationFrame(() => { log.scrollTop = log.scrollHeight; }); }

  function initials(name) {
    const parts = name.trim().split(/\s+/).filter(Boolean);
    const s = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : (parts[0] || "?").slice(0, 2);
    return s.toUpperCase();
  }

  function addMessage(from, text, opts = {}) {
    const el = document.createElement("div");
    el.className = "msg " + from + (opts.pending ? " pending" : "");
    if (opts.id != null) el.dataset.id = String(opts.id);
    const who = document.createElement("span");
    if (from === "agent" && opts.author) {
      // A person: their name and initials on every line.
      who.className = "author";
      const badge = document.createElement("span");
      badge.className = "avatar"; badge.setAttribute("aria-hidden", "true");
      badge.textContent = initials(opts.author);
      const name = document.createElement("span");
      name.textContent = opts.author;
      who.append(badge, name);
    } else {
      who.className = "sr-only";
      who.textContent = (from === "visitor" ? t("you") : from === "agent" ? t("agent") : t("bot")) + ": ";
    }
    const body = document.createElement("span");
    body.className = "body";
    body.textContent = text;
    const meta = document.createElement("span");
    meta.className = "meta";
    const at = opts.at ? new Date(opts.at) : new Date();
    meta.textContent = at.toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB", { hour: "2-digit", minute: "2-digit" });
    el.append(who, body, meta);
    if (from === "system" && opts.author) {
      const badge = document.createElement("span");
      badge.className = "avatar"; badge.setAttribute("aria-hidden", "true");
      badge.textContent = initials(opts.author);
      el.prepend(badge);
    }
    log.insertBefore(el, typingEl && typingEl.parentNode === log ? typingEl : null);
    scroll();
    return el;
  }

  function addNote(text, isError) {
    const el = document.createElement("p");
    el.className = "note" + (isError ? " error" : "");
    el.textContent = text;
    log.insertBefore(el, typingEl && typingEl.parentNode === log ? typingEl : null);
    scroll();
    return el;
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
    scroll();
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
    banner.dataset.kind = "";
    if (text) { banner.textContent = text; banner.hidden = false; } else { banner.hidden = true; banner.textContent = ""; }
  }

  function frame(obj) {
    if (ws && ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify(obj)); return true; }
    return false;
  }

  function sendText(text, payload) {
    text = text.trim();
    if (!text) return;
    talked = true;
    activity();
    showQuick([]);
    const id = "c" + Date.now().toString(36) + (seq++);
    const el = addMessage("visitor", text, { pending: true });
    const item = { text, payload, el, sent: false };
    pending.set(id, item);
    if (ready) {
      item.sent = frame({ type: "message", text, client_id: id, payload });
      // The bot answers in a moment; a person writes when they write.
      if (item.sent && !withPerson()) setTyping(true);
    }
  }

  function markFailed(id, item) {
    pending.delete(id);
    item.el.classList.remove("pending");
    item.el.classList.add("failed");
    const note = document.createElement("span");
    note.className = "failed-note";
    note.textContent = t("failed") + " ";
    const b = document.createElement("button");
    b.type = "button"; b.textContent = t("retry");
    b.addEventListener("click", () => {
      note.remove(); item.el.classList.remove("failed"); item.el.classList.add("pending");
      pending.set(id, item);
      item.sent = frame({ type: "message", text: item.text, client_id: id, payload: item.payload });
      if (item.sent && !withPerson()) setTyping(true);
    });
    note.append(b);
    item.el.append(note);
    scroll();
  }

  function flushPending() {
    for (const [id, item] of pending) {
      if (!item.sent) { item.sent = frame({ type: "message", text: item.text, client_id: id, payload: item.payload }); }
    }
    if (pending.size && !withPerson()) setTyping(true);
  }

  // ---- shared-kiosk privacy: forget an idle conversation
  function clearIdle() { clearTimeout(idleTimer); clearInterval(countdownTimer); idleTimer = null; countdownTimer = null; }
  function activity() {
    const warned = banner.dataset.kind === "idle";
    clearIdle();
    if (warned) setBanner("");
    if (!idleResetSecs || !talked || stopped) return;
    // The warning takes the last third of the wait, at most COUNTDOWN_SECS.
    const countdown = Math.min(COUNTDOWN_SECS, Math.max(5, Math.floor(idleResetSecs / 3)));
    const warnAfter = Math.max(0, idleResetSecs - countdown) * 1000;
    idleTimer = setTimeout(() => {
      let left = countdown;
      const tick = () => {
        if (left <= 0) { clearIdle(); setBanner(""); startOver(); return; }
        // Built once, then only the seconds change: the button stays put
        // under the visitor's finger.
        if (banner.dataset.kind !== "idle" || banner.hidden) {
          setBanner(" ");
          banner.dataset.kind = "idle";
          const text = document.createElement("span");
          const b = document.createElement("button");
          b.type = "button"; b.textContent = t("stay");
          b.addEventListener("click", () => { activity(); input.focus(); });
          banner.replaceChildren(text, " ", b);
        }
        banner.firstChild.textContent = t("idle", left);
        left -= 1;
      };
      tick();
      countdownTimer = setInterval(tick, 1000);
    }, warnAfter);
  }
  ["keydown", "pointerdown"].forEach((ev) => document.addEventListener(ev, () => { if (idleTimer || countdownTimer) activity(); }, { passive: true }));

  // End the conversation and start a fresh one for the next visitor, on the
  // same connection (no "connection lost" in between).
  function startOver() {
    clearIdle();
    frame({ type: "message", text: t("end"), payload: "/end" });
    localStorage.removeItem(KEY);
    localStorage.removeItem(LANG_KEY);
    pending.clear();
    talked = false; state = "bot"; queueNote = null;
    setTyping(false);
    log.replaceChildren();
    showQuick([]);
    addNote(t("starting"));
    restarting = true;
    lang = "en"; applyLang();
    if (!frame({ type: "hello", v: PROTOCOL })) restarting = false;
  }

  function onFrame(f) {
    if (restarting && f.type !== "welcome") return;
    switch (f.type) {
      case "welcome": {
        restarting = false;
        localStorage.setItem(KEY, f.session);
        ready = true; retry = 0;
        state = f.state;
        idleResetSecs = f.idle_reset_secs || 0;
        setBanner(""); statusEl.textContent = t("online");
        // Re-render the stored conversation, then keep what is still unsent.
        const keep = [...pending.values()].map((p) => p.el);
        log.replaceChildren();
        queueNote = null;
        if (f.more) addNote(t("more"));
        let lastQuick = [];
        for (const h of f.history) {
          addMessage(h.from, h.text, { id: h.id, at: h.at, author: h.author });
          lastQuick = h.from === "visitor" ? [] : (h.quick_replies || []);
        }
        talked = f.history.some((h) => h.from === "visitor");
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
        activity();
        break;
      }
      case "ack": {
        const item = f.client_id && pending.get(f.client_id);
        if (item) { item.el.classList.remove("pending"); item.el.dataset.id = String(f.id); pending.delete(f.client_id); }
        break;
      }
      case "reply":
        state = f.state;
        if (!pending.size || withPerson()) setTyping(false);
        if (queueNote && f.state !== "waiting_for_agent") { queueNote.remove(); queueNote = null; }
        addMessage(f.from, f.text, { id: f.id, author: f.author });
        showQuick(f.quick_replies);
        if (f.state === "ended") addNote(t("ended"));
        activity();
        break;
      case "edit": {
        // A line shown earlier changed (the greeting after a language switch).
        const el = log.querySelector(`.msg[data-id="${Number(f.id)}"] .body`);
        if (el) el.textContent = f.text;
        const last = log.querySelector(".msg:last-of-type");
        if (last && last.dataset.id === String(f.id)) showQuick(f.quick_replies);
        break;
      }
      case "typing":
        // A colleague is typing: dots until their line, or a few seconds
        // without news.
        setTyping(true);
        clearTimeout(agentTypingTimer);
        agentTypingTimer = setTimeout(() => { if (!pending.size || withPerson()) setTyping(false); }, AGENT_TYPING_MS);
        break;
      case "notice":
        if (f.code === "queue_position") {
          // One line for the place in the queue, kept current.
          if (queueNote) queueNote.textContent = f.text; else queueNote = addNote(f.text);
          queueNote.classList.add("queue");
        } else {
          addNote(f.text);
        }
        break;
      case "error":
        setTyping(false);
        // Known refusals in the visitor's language; anything else as the node says it.
        if (f.code !== "unknown_session") addNote(T[lang][f.code] || f.message, true);
        // The error names the line it refuses; other lines stay as they are.
        if (f.client_id && pending.has(f.client_id)) markFailed(f.client_id, pending.get(f.client_id));
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
      const hello = { type: "hello", v: PROTOCOL };
      const session = localStorage.getItem(KEY);
      if (session) hello.session = session;
      // The language goes along only when the visitor picked one; else the
      // node detects it from their first message.
      if (localStorage.getItem(LANG_KEY)) hello.lang = lang;
      ws.send(JSON.stringify(hello));
    });
    ws.addEventListener("message", (ev) => {
      let f;
      try { f = JSON.parse(ev.data); } catch { return; }
      onFrame(f);
    });
    ws.addEventListener("close", (ev) => {
      ready = false;
      restarting = false;
      setTyping(false);
      if (ev.code === 4001) {
        stopped = true;
        clearIdle();
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
    // Tell a human agent the visitor is typing (at most every 2 s; the bot
    // does not need to know, and the frames count against the rate limit).
    const now = Date.now();
    if (ready && withPerson() && now - lastTyping > 2000) { lastTyping = now; frame({ type: "typing" }); }
  });

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value;
    input.value = "";
    lastTyping = 0; // the line ends the agent's "typing"; the next keystroke says so again
    sendText(text);
    input.focus();
  });
  document.querySelectorAll(".lang button").forEach((b) => b.addEventListener("click", () => {
    lang = b.dataset.lang;
    localStorage.setItem(LANG_KEY, lang);
    talked = true; // the next visitor must not inherit the choice either
    activity();
    applyLang();
    frame({ type: "set_lang", lang });
  }));
  // Shared kiosk: end the conversation and start afresh for the next visitor.
  $("end").addEventListener("click", startOver);

  applyLang();
  connect();
})();
