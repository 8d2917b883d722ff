// The chat page: plain ES2022, no dependencies, speaks the `chat.v1` subprotocol
// (see lib/protocol.ts). Message data only ever reaches the DOM via textContent.

const LOBBY = "lobby";
const PAGE = 50;
const TYPING_EVERY = 3000;
const TYPING_SHOWN = 5000;
const READ_DELAY = 1000;
const PING_EVERY = 25000;
const BACKOFF_MIN = 500;
const BACKOFF_MAX = 15000;
const NAME_RE = /^[\p{L}\p{N}\p{M}_.-]+$/u;

const $ = (id) => document.getElementById(id);
const ui = {
  menu: $("menu"),
  status: $("status"),
  me: $("me"),
  logout: $("logout"),
  login: $("login"),
  name: $("name"),
  loginError: $("login-error"),
  app: $("app"),
  sidebar: $("sidebar"),
  rooms: $("rooms"),
  dms: $("dms"),
  users: $("users"),
  joinForm: $("join-form"),
  joinRoom: $("join-room"),
  title: $("title"),
  list: $("messages"),
  typing: $("typing"),
  notice: $("notice"),
  sendForm: $("send-form"),
  composer: $("composer"),
};

// ---- state ----------------------------------------------------------------

let me = null; // the logged-in user (as the server normalised it)
let ws = null; // the current socket
let welcomed = false; // the current socket got its welcome
let everWelcomed = false; // some socket got a welcome since logging in
let fromForm = false; // this login came from the form (a failure goes back to it)
let attempt = 0;
let retryAt = 0;
let retryTimer = 0;
let tickTimer = 0;
let pingTimer = 0;
let lastRx = 0;
let lastTyping = { key: "", at: 0 }; // throttles `typing` per conversation
let wantOpen = null; // a room to open once its `joined` arrives
let limits = { maxTextLength: 4000, maxFrameBytes: 65536 };
let rooms = [LOBBY];
const dms = new Set();
const online = new Set();
/** @type {Map<string, Conv>} key "r:<room>" or "d:<peer>" */
const convs = new Map();
let current = "r:" + LOBBY;
/** Sends not yet acknowledged: {cid, key, text, ts, from, failed?, error?, el?, sentOn?} */
let pending = [];

/**
 * @typedef {{key: string, byId: Map<number, object>, order: object[], last: number,
 *   read: number, unread: number, more: boolean, loaded: boolean, olderBusy: boolean,
 *   reqs: string[], seen: number, settled: boolean, readTimer: number, draft: string, typing: Map<string, number>}} Conv
 */

const isRoom = (key) => key[0] === "r";
const nameOf = (key) => key.slice(2);
const cmp = (a, b) => a.localeCompare(b);
// The conversation a frame belongs to; for a DM it is the other party.
const keyOf = (f) =>
  f.room !== undefined ? "r:" + f.room : "d:" + (f.with ?? (f.from === me ? f.to : f.from));
const where = (key, userField) =>
  isRoom(key) ? { room: nameOf(key) } : { [userField]: nameOf(key) };

function conv(key) {
  let c = convs.get(key);
  if (!c) {
    c = {
      key,
      byId: new Map(),
      order: [],
      last: 0,
      read: 0,
      unread: 0,
      more: false,
      loaded: false,
      olderBusy: false,
      reqs: [],
      seen: 0,
      settled: false,
      readTimer: 0,
      draft: "",
      typing: new Map(),
    };
    convs.set(key, c);
  }
  return c;
}

function checkName(raw) {
  const name = String(raw).trim().normalize("NFC");
  const n = [...name].length;
  if (n === 0) return { error: "Enter a name." };
  if (n > 32) return { error: "A name has at most 32 characters." };
  if (!NAME_RE.test(name) || name === "." || name === "..") {
    return { error: "Use only letters, digits, “_”, “-” and “.” (no spaces)." };
  }
  return { name };
}

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  // Not a secure context (plain http on a LAN): build a v4 UUID by hand.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const store = {
  get(k) {
    try {
      return localStorage.getItem(k);
    } catch {
      return null;
    }
  },
  set(k, v) {
    try {
      if (v === null) localStorage.removeItem(k);
      else localStorage.setItem(k, v);
    } catch { /* storage full or disabled: keep going in memory */ }
  },
};

function savePending() {
  if (!me) return;
  const list = pending.map(({ cid, key, text, ts, failed, error }) => ({
    cid,
    key,
    text,
    ts,
    failed,
    error,
  }));
  store.set("chat.pending." + me, list.length ? JSON.stringify(list) : null);
}

function loadPending() {
  pending = [];
  try {
    const list = JSON.parse(store.get("chat.pending." + me) ?? "[]");
    for (const p of Array.isArray(list) ? list : []) {
      if (typeof p?.cid === "string" && /^[rd]:./.test(p.key) && typeof p.text === "string") {
        pending.push({ ...p, from: me, ts: Number(p.ts) || Date.now(), failed: !!p.failed });
      }
    }
  } catch { /* a corrupt entry: start empty */ }
}

// ---- connection -----------------------------------------------------------

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

function connect() {
  clearTimeout(retryTimer);
  clearInterval(tickTimer);
  const proto = location.protocol === "https:" ? "wss" : "ws";
  let sock;
  try {
    sock = new WebSocket(`${proto}://${location.host}/ws/${encodeURIComponent(me)}`, "chat.v1");
  } catch {
    scheduleReconnect();
    return;
  }
  ws = sock;
  welcomed = false;
  setStatus("connecting", "connecting…");
  sock.onmessage = (e) => {
    if (ws !== sock || typeof e.data !== "string") return;
    lastRx = Date.now();
    let f;
    try {
      f = JSON.parse(e.data);
    } catch {
      return;
    }
    if (f && typeof f.type === "string") handle(f);
  };
  sock.onclose = () => {
    if (ws === sock) dropped();
  };
}

// The socket is gone (closed by the server, the network or a dead ping).
function dropped() {
  const sock = ws;
  ws = null;
  welcomed = false;
  clearInterval(pingTimer);
  if (sock) {
    sock.onmessage = sock.onclose = null;
    try {
      sock.close();
    } catch { /* already closing */ }
  }
  for (const p of pending) p.sentOn = null;
  for (const c of convs.values()) {
    c.reqs = [];
    c.olderBusy = false;
    for (const t of c.typing.values()) clearTimeout(t);
    c.typing.clear();
  }
  renderTyping();
  if (!me) return;
  if (!everWelcomed && fromForm) {
    const name = me;
    logout();
    showLoginError(
      `Could not log in as “${name}”: the server refused the name or cannot be reached.`,
    );
    return;
  }
  scheduleReconnect();
}

function scheduleReconnect() {
  const base = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** attempt++);
  const delay = Math.round(base * (0.5 + Math.random() * 0.5));
  retryAt = Date.now() + delay;
  const tick = () => {
    const s = Math.max(1, Math.ceil((retryAt - Date.now()) / 1000));
    setStatus("reconnecting", `reconnecting in ${s}s…`);
  };
  tick();
  clearInterval(tickTimer);
  tickTimer = setInterval(tick, 500);
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, delay);
}

function send(frame) {
  if (!ws || !welcomed || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify(frame));
  return true;
}

addEventListener("online", () => {
  if (me && !ws) connect();
});

// ---- frames from the server -----------------------------------------------

function handle(f) {
  switch (f.type) {
    case "welcome":
      return onWelcome(f);
    case "message":
      return onMessage(f);
    case "history":
      return onHistory(f);
    case "joined":
    case "left":
      return onMembership(f);
    case "typing":
      return onTyping(f);
    case "read":
      return onRead(f);
    case "presence":
      return onPresence(f);
    case "error":
      return onError(f);
  }
}

function onWelcome(f) {
  me = f.user ?? me;
  store.set("chat.user", me);
  welcomed = everWelcomed = true;
  attempt = 0;
  clearInterval(tickTimer);
  setStatus("connected", "connected");
  if (f.limits) limits = f.limits;
  ui.composer.maxLength = limits.maxTextLength;
  ui.me.textContent = me;
  ui.me.hidden = false;
  const first = ui.app.hidden;
  showApp();

  rooms = [LOBBY, ...(f.rooms ?? []).filter((r) => r !== LOBBY).sort(cmp)];
  online.clear();
  for (const u of f.online ?? []) if (u !== me) online.add(u);
  for (const s of f.conversations ?? []) {
    const c = conv(keyOf(s));
    c.last = Math.max(c.last, s.last ?? 0);
    c.read = s.read ?? 0;
    c.unread = s.unread ?? 0;
    if (s.with !== undefined) dms.add(s.with);
  }
  if (isRoom(current) && !rooms.includes(nameOf(current))) current = "r:" + LOBBY;

  clearInterval(pingTimer);
  pingTimer = setInterval(() => {
    if (Date.now() - lastRx > 2.5 * PING_EVERY) dropped();
    else send({ type: "ping" });
  }, PING_EVERY);

  open(current, first);
  // Unacknowledged sends go again with the same cid: the server stores a
  // repeated (sender, cid) once. One that was stored before the drop also
  // shows up (with its cid) in the history asked for here.
  const keys = new Set();
  for (const p of pending) {
    if (p.failed) continue;
    keys.add(p.key);
    transmit(p);
  }
  for (const key of keys) if (key !== current) requestHistory(conv(key), false);
}

function addMsg(c, m) {
  if (typeof m.id !== "number" || c.byId.has(m.id)) return false;
  const msg = { id: m.id, from: m.from, text: String(m.text), ts: m.ts, cid: m.cid };
  if (m.cid && m.from === me) {
    const i = pending.findIndex((p) => p.cid === m.cid);
    if (i >= 0) {
      msg.el = pending[i].el; // the acknowledgement replaces the pending copy in place
      pending.splice(i, 1);
      savePending();
    }
  }
  c.byId.set(msg.id, msg);
  let i = c.order.length;
  while (i > 0 && c.order[i - 1].id > msg.id) i--;
  c.order.splice(i, 0, msg);
  c.last = Math.max(c.last, msg.id);
  if (msg.el) updateMsgEl(msg);
  return true;
}

function viewing(key) {
  return key === current && !ui.app.hidden && document.visibilityState === "visible";
}

function onMessage(m) {
  const key = keyOf(m);
  const c = conv(key);
  if (!isRoom(key) && !dms.has(nameOf(key))) {
    dms.add(nameOf(key));
  }
  if (!addMsg(c, m)) return;
  stopTyping(c, m.from);
  if (viewing(key)) markRead(c); // own messages too: the server counts them until read
  else if (m.from !== me && m.id > c.read) c.unread++;
  if (key === current) renderMessages(m.from === me ? "bottom" : "auto");
  renderSidebar();
}

function onHistory(f) {
  const key = keyOf(f);
  const c = conv(key);
  const kind = c.reqs.shift() ?? "latest";
  const msgs = (Array.isArray(f.messages) ? f.messages : []).filter((m) =>
    typeof m?.id === "number"
  );
  if (kind === "older") c.olderBusy = false;
  const newest = c.order.at(-1)?.id ?? 0;
  // Too much happened while away: drop what we had rather than show a gap.
  if (kind === "latest" && newest && msgs.length && msgs[0].id > newest + 1) {
    c.byId.clear();
    c.order = [];
  }
  const oldest = c.order[0]?.id ?? Infinity;
  for (const m of msgs) addMsg(c, m);
  if (kind === "older" || !c.loaded || (msgs.length && msgs[0].id <= oldest)) c.more = !!f.more;
  if (!msgs.length && kind === "latest" && !c.order.length) c.more = false;
  if (c.order[0]?.id === 1) c.more = false;
  const first = !c.loaded;
  c.loaded = true;
  if (kind === "latest") c.settled = true;
  if (key === current) {
    renderMessages(kind === "older" ? "keep" : first ? "bottom" : "auto");
    if (viewing(key)) markRead(c);
  }
  renderSidebar();
}

function onMembership(f) {
  if (f.user !== me || typeof f.room !== "string") return;
  if (f.type === "joined") {
    if (!rooms.includes(f.room)) rooms = [LOBBY, ...rooms.slice(1), f.room].sort(roomOrder);
    if (wantOpen === f.room) {
      wantOpen = null;
      open("r:" + f.room);
    }
  } else {
    rooms = rooms.filter((r) => r !== f.room || r === LOBBY);
    if (current === "r:" + f.room) open("r:" + LOBBY);
  }
  renderSidebar();
}

function roomOrder(a, b) {
  return a === LOBBY ? -1 : b === LOBBY ? 1 : cmp(a, b);
}

function onTyping(f) {
  if (f.from === me || typeof f.from !== "string") return;
  const c = conv(keyOf(f));
  clearTimeout(c.typing.get(f.from));
  c.typing.set(f.from, setTimeout(() => stopTyping(c, f.from), TYPING_SHOWN));
  if (c.key === current) renderTyping();
}

function stopTyping(c, user) {
  if (!c.typing.has(user)) return;
  clearTimeout(c.typing.get(user));
  c.typing.delete(user);
  if (c.key === current) renderTyping();
}

function onRead(f) {
  const c = conv(keyOf(f));
  c.read = Math.max(c.read, f.id);
  c.unread = c.read >= c.last ? 0 : Math.min(c.unread, c.last - c.read);
  renderSidebar();
}

function onPresence(f) {
  if (f.user === me) return;
  if (f.online) online.add(f.user);
  else online.delete(f.user);
  renderSidebar();
}

function onError(f) {
  const p = f.ref && pending.find((x) => x.cid === f.ref);
  if (p) {
    p.failed = true;
    p.error = f.message || f.code;
    p.sentOn = null;
    savePending();
    if (p.el) updateMsgEl(p);
    return;
  }
  if (f.code === "bad_name" || f.code === "not_member") wantOpen = null;
  notice(f.message || f.code);
}

// ---- actions ----------------------------------------------------------------

// Clears a conversation's badge now and tells the server (and my other tabs)
// soon: one `read` frame per second at most while messages stream in.
function markRead(c, now = false) {
  if (c.unread) {
    c.unread = 0;
    renderSidebar();
  }
  c.seen = Math.max(c.seen, c.last);
  if (c.seen <= c.read) return;
  if (now) {
    clearTimeout(c.readTimer);
    sendRead(c);
  } else if (!c.readTimer) c.readTimer = setTimeout(() => sendRead(c), READ_DELAY);
}

function sendRead(c) {
  c.readTimer = 0;
  if (c.seen > c.read && send({ type: "read", ...where(c.key, "with"), id: c.seen })) {
    c.read = c.seen;
  }
}

function requestHistory(c, older) {
  const frame = { type: "history", ...where(c.key, "with"), limit: PAGE };
  if (older) frame.before = c.order[0].id;
  if (!send(frame)) return;
  c.reqs.push(older ? "older" : "latest");
  if (older) c.olderBusy = true;
}

function loadOlder() {
  const c = conv(current);
  if (c.more && !c.olderBusy && c.order.length && welcomed) {
    requestHistory(c, true);
    renderMessages("keep");
  }
}

function transmit(p) {
  if (p.sentOn && p.sentOn === ws) return;
  const frame = { type: "send", ...where(p.key, "to"), text: p.text, cid: p.cid };
  if (new TextEncoder().encode(JSON.stringify(frame)).length > limits.maxFrameBytes) {
    p.failed = true;
    p.error = "too long";
  } else if (send(frame)) {
    p.sentOn = ws;
  }
  savePending();
  if (p.el) updateMsgEl(p);
}

function submit() {
  const text = ui.composer.value;
  if (!text.trim() || !me) return;
  if (text.length > limits.maxTextLength) {
    notice(`A message has at most ${limits.maxTextLength} characters.`);
    return;
  }
  const p = { cid: uuid(), key: current, text, ts: Date.now(), from: me, failed: false };
  pending.push(p);
  ui.composer.value = "";
  conv(current).draft = "";
  transmit(p);
  renderMessages("bottom");
}

// Shows a conversation; `byUser` when a person asked for it (closes the
// phone sidebar, focuses the composer on wide screens).
function open(key, byUser = true) {
  const prev = conv(current);
  if (key !== current) {
    prev.draft = ui.composer.value;
    ui.composer.value = conv(key).draft;
  }
  current = key;
  store.set("chat.open." + me, key);
  const c = conv(key);
  c.settled = false; // until its history arrives: no announcing the whole list
  if (!isRoom(key)) dms.add(nameOf(key));
  ui.title.textContent = nameOf(key);
  ui.title.className = isRoom(key) ? "room" : "dm";
  ui.composer.placeholder = `Message ${isRoom(key) ? "#" : "@"}${nameOf(key)}`;
  if (byUser) toggleSidebar(false);
  renderMessages("bottom");
  renderTyping();
  requestHistory(c, false);
  if (viewing(key)) markRead(c, true);
  renderSidebar();
  if (byUser && matchMedia("(min-width: 721px)").matches) ui.composer.focus();
}

function login(name, viaForm) {
  me = name;
  fromForm = viaForm;
  everWelcomed = false;
  attempt = 0;
  loadPending();
  const last = store.get("chat.open." + me);
  if (last && /^[rd]:./.test(last)) current = last;
  ui.loginError.textContent = "";
  if (!viaForm) {
    showApp();
    open(current, false);
  }
  connect();
}

function logout() {
  const sock = ws;
  ws = null;
  if (sock) {
    sock.onmessage = sock.onclose = null;
    sock.close(1000);
  }
  clearTimeout(retryTimer);
  for (const t of [tickTimer, pingTimer]) clearInterval(t);
  for (const c of convs.values()) {
    clearTimeout(c.readTimer);
    for (const t of c.typing.values()) clearTimeout(t);
  }
  store.set("chat.user", null);
  me = null;
  welcomed = everWelcomed = false;
  rooms = [LOBBY];
  dms.clear();
  online.clear();
  convs.clear();
  pending = [];
  current = "r:" + LOBBY;
  ui.composer.value = "";
  for (const el of [ui.list, ui.rooms, ui.dms, ui.users]) el.replaceChildren();
  setStatus("idle", "not connected");
  ui.me.hidden = ui.logout.hidden = ui.menu.hidden = true;
  ui.app.hidden = true;
  ui.login.hidden = false;
  ui.login.querySelector("button").disabled = false;
  document.title = "Chat";
  ui.name.focus();
}

function showApp() {
  if (!ui.app.hidden) return;
  ui.login.hidden = true;
  ui.app.hidden = false;
  ui.menu.hidden = ui.logout.hidden = false;
  renderSidebar();
}

function showLoginError(text) {
  ui.loginError.textContent = text;
  ui.name.setAttribute("aria-invalid", "true");
  ui.name.focus();
}

let noticeTimer = 0;
function notice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => (ui.notice.hidden = true), 6000);
}

function toggleSidebar(force) {
  const openNow = force ?? !ui.app.classList.contains("nav-open");
  ui.app.classList.toggle("nav-open", openNow);
  ui.menu.setAttribute("aria-expanded", String(openNow));
}

// ---- rendering ----------------------------------------------------------------

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const dayFmt = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "numeric",
  minute: "2-digit",
});
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

function el(tag, cls, parent) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (parent) parent.append(e);
  return e;
}

function msgEl(m) {
  const root = el("div", "msg");
  const meta = el("div", "meta", root);
  el("span", "from", meta);
  el("time", "time", meta);
  el("span", "state", meta);
  el("div", "text", root).textContent = m.text;
  m.el = root;
  updateMsgEl(m);
  return root;
}

function updateMsgEl(m) {
  const root = m.el;
  const isPending = m.id === undefined;
  root.classList.toggle("mine", m.from === me);
  root.classList.toggle("pending", isPending && !m.failed);
  root.classList.toggle("failed", isPending && !!m.failed);
  if (isPending) delete root.dataset.id;
  else root.dataset.id = String(m.id);
  if (m.cid) root.dataset.cid = m.cid;
  root.querySelector(".from").textContent = m.from;
  const t = root.querySelector(".time");
  const d = new Date(m.ts);
  if (!isNaN(d)) {
    const today = d.toDateString() === new Date().toDateString();
    t.textContent = (today ? timeFmt : dayFmt).format(d);
    t.dateTime = d.toISOString();
    t.title = fullFmt.format(d);
  }
  const state = root.querySelector(".state");
  state.replaceChildren();
  if (isPending && m.failed) {
    state.append(`not sent${m.error ? ` (${m.error})` : ""} `);
    const retry = el("button", "retry", state);
    retry.type = "button";
    retry.dataset.action = "retry";
    retry.textContent = "Retry";
    const drop = el("button", "discard", state);
    drop.type = "button";
    drop.dataset.action = "discard";
    drop.textContent = "Discard";
  } else if (isPending) {
    state.textContent = "sending…";
  }
}

function renderMessages(mode) {
  const c = conv(current);
  const list = ui.list;
  const h0 = list.scrollHeight;
  const t0 = list.scrollTop;
  const nearBottom = h0 - t0 - list.clientHeight < 80;
  list.classList.toggle("loading", c.olderBusy || (!c.loaded && !c.order.length));
  list.classList.toggle("start", c.loaded && !c.more && c.order.length > 0);
  list.setAttribute("aria-busy", String(!c.settled || c.olderBusy));
  const items = [...c.order, ...pending.filter((p) => p.key === current)];
  let cursor = list.firstChild;
  for (const m of items) {
    const node = m.el ?? msgEl(m);
    if (node === cursor) cursor = cursor.nextSibling;
    else list.insertBefore(node, cursor);
  }
  while (cursor) {
    const next = cursor.nextSibling;
    cursor.remove();
    cursor = next;
  }
  if (mode === "bottom" || (mode === "auto" && nearBottom)) list.scrollTop = list.scrollHeight;
  else if (mode === "keep") list.scrollTop = t0 + (list.scrollHeight - h0);
  // Not enough to scroll yet: fetch older pages until there is.
  if (c.more && !c.olderBusy && list.scrollHeight <= list.clientHeight) loadOlder();
}

function renderTyping() {
  const who = [...conv(current).typing.keys()];
  ui.typing.textContent = who.length === 0
    ? ""
    : who.length === 1
    ? `${who[0]} is typing…`
    : who.length === 2
    ? `${who[0]} and ${who[1]} are typing…`
    : "Several people are typing…";
}

// Keeps a list's items (keyed by a data attribute) in order, reusing elements
// so focus survives updates.
function syncList(ul, attr, names, fill) {
  const have = new Map([...ul.children].map((li) => [li.dataset[attr], li]));
  let cursor = ul.firstChild;
  for (const name of names) {
    let li = have.get(name);
    if (!li) {
      li = el("li");
      li.dataset[attr] = name;
      const btn = el("button", "open", li);
      btn.type = "button";
      el("span", "dot", btn).setAttribute("aria-hidden", "true");
      el("span", "label", btn).textContent = name;
      el("span", "badge", btn).setAttribute("aria-hidden", "true");
    }
    have.delete(name);
    fill(li, name);
    if (li === cursor) cursor = cursor.nextSibling;
    else ul.insertBefore(li, cursor);
  }
  for (const li of have.values()) li.remove();
}

function setItem(li, key, label, markCurrent = true) {
  const c = convs.get(key);
  const n = c?.unread ?? 0;
  const btn = li.querySelector(".open");
  const badge = li.querySelector(".badge");
  badge.textContent = n > 99 ? "99+" : String(n);
  badge.hidden = n === 0;
  btn.setAttribute("aria-label", n ? `${label}, ${n} unread` : label);
  if (markCurrent && key === current) btn.setAttribute("aria-current", "true");
  else btn.removeAttribute("aria-current");
}

function renderSidebar() {
  syncList(ui.rooms, "room", rooms, (li, room) => {
    setItem(li, "r:" + room, `Room ${room}`);
    let leave = li.querySelector(".leave");
    if (room !== LOBBY && !leave) {
      leave = el("button", "leave", li);
      leave.type = "button";
      leave.textContent = "×";
      leave.setAttribute("aria-label", `Leave ${room}`);
      leave.title = `Leave ${room}`;
    }
  });
  const peers = [...dms].sort(cmp);
  syncList(ui.dms, "dm", peers, (li, user) => {
    const on = online.has(user);
    li.classList.toggle("online", on);
    setItem(li, "d:" + user, `Direct messages with ${user} (${on ? "online" : "offline"})`);
  });
  syncList(ui.users, "user", [...online].sort(cmp), (li, user) => {
    li.classList.add("online");
    setItem(li, "d:" + user, `Message ${user}`, false);
  });
  let total = 0;
  for (const [key, c] of convs) {
    if (isRoom(key) ? rooms.includes(nameOf(key)) : dms.has(nameOf(key))) total += c.unread;
  }
  document.title = total ? `(${total}) Chat` : "Chat";
  const mb = ui.menu.querySelector(".badge");
  mb.textContent = String(total);
  mb.hidden = total === 0;
}

// ---- events -----------------------------------------------------------------

ui.login.addEventListener("submit", (e) => {
  e.preventDefault();
  const r = checkName(ui.name.value);
  if (r.error) return showLoginError(r.error);
  ui.name.removeAttribute("aria-invalid");
  ui.loginError.textContent = "";
  ui.login.querySelector("button").disabled = true;
  setStatus("connecting", "connecting…");
  login(r.name, true);
});

ui.logout.addEventListener("click", () => {
  logout();
});

ui.menu.addEventListener("click", () => toggleSidebar());

addEventListener("keydown", (e) => {
  if (e.key === "Escape" && ui.app.classList.contains("nav-open")) {
    toggleSidebar(false);
    ui.menu.focus();
  }
});

ui.sidebar.addEventListener("click", (e) => {
  const li = e.target.closest("li");
  if (!li) return;
  if (li.dataset.room !== undefined) {
    if (e.target.closest(".leave")) {
      if (!send({ type: "leave", room: li.dataset.room })) notice("Not connected.");
    } else open("r:" + li.dataset.room);
  } else if (li.dataset.dm !== undefined) open("d:" + li.dataset.dm);
  else if (li.dataset.user !== undefined) open("d:" + li.dataset.user);
});

ui.joinForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const r = checkName(ui.joinRoom.value);
  if (r.error) return notice(`Room name: ${r.error}`);
  ui.joinRoom.value = "";
  if (rooms.includes(r.name)) return open("r:" + r.name);
  if (!send({ type: "join", room: r.name })) return notice("Not connected.");
  wantOpen = r.name;
});

ui.sendForm.addEventListener("submit", (e) => {
  e.preventDefault();
  submit();
  ui.composer.focus();
});

ui.composer.addEventListener("keydown", (e) => {
  // Enter sends; Shift+Enter is a newline; Enter that ends an IME composition does neither.
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
    e.preventDefault();
    submit();
  }
});

ui.composer.addEventListener("input", () => {
  const now = Date.now();
  if (!ui.composer.value.trim()) return;
  if (lastTyping.key === current && now - lastTyping.at < TYPING_EVERY) return;
  if (send({ type: "typing", ...where(current, "to") })) lastTyping = { key: current, at: now };
});

ui.list.addEventListener("scroll", () => {
  if (ui.list.scrollTop < 80) loadOlder();
}, { passive: true });

ui.list.addEventListener("click", (e) => {
  const btn = e.target.closest("button[data-action]");
  const cid = btn?.closest(".msg")?.dataset.cid;
  const p = cid && pending.find((x) => x.cid === cid);
  if (!p) return;
  if (btn.dataset.action === "retry") {
    p.failed = false;
    p.error = undefined;
    transmit(p);
  } else {
    pending.splice(pending.indexOf(p), 1);
    savePending();
    renderMessages("auto");
  }
});

document.addEventListener("visibilitychange", () => {
  if (me && viewing(current)) markRead(conv(current));
});

// Leaving the page: send the `read` frames still waiting for their second.
addEventListener("pagehide", () => {
  for (const c of convs.values()) if (c.readTimer) sendRead(c);
});

// ---- start ----------------------------------------------------------------

const saved = store.get("chat.user");
const savedName = saved && checkName(saved).name;
if (savedName) login(savedName, false);
else ui.name.focus();
