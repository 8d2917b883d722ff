// The chat page: plain ES2022, no dependencies, speaks the `chat.v1` subprotocol
// (see lib/protocol.ts and the README). Nothing from the server ever reaches the
// DOM as HTML: text goes in through textContent, links through the href property.

// ---- strings ------------------------------------------------------------------

const STRINGS = {
  en: {
    appName: "Chat",
    conversations: "Conversations",
    language: "Language",
    reconnectNow: "Reconnect now",
    loginTitle: "Log in",
    yourName: "Your name",
    nameHelp: "Up to 32 letters or digits of any script, and _ - .",
    password: "Password",
    optional: "(optional)",
    passwordHelp:
      "Only if you have set one. The first time, leave it empty: the name becomes yours in this browser.",
    logIn: "Log in",
    rooms: "Rooms",
    findRooms: "Find or create a room",
    invitations: "Invitations",
    dms: "Direct messages",
    people: "People",
    onlineCount: "{n} online",
    showMore: "Show more",
    noneYet: "None yet",
    nobodyElse: "Nobody else yet",
    invite: "Invite",
    askNotify:
      "Get a desktop notification for direct messages and mentions while this tab is in the background?",
    turnOn: "Turn on",
    notNow: "Not now",
    jumpLatest: "Jump to latest",
    message: "Message",
    send: "Send",
    close: "Close",
    joinOrCreate: "Join or create a room",
    go: "Go",
    privateRoom: "Private: only people you invite can join",
    publicRooms: "Public rooms",
    account: "Account",
    newPassword: "New password",
    setPassword: "Set password",
    notifications: "Notifications",
    logOut: "Log out",
    logOutEverywhere: "Log out everywhere",
    inviteWho: "Who?",
    st_idle: "not connected",
    st_connecting: "connecting…",
    st_connected: "connected",
    st_reconnecting: "reconnecting in {s}s…",
    st_offline: "offline",
    live_connecting: "Connecting.",
    live_connected: "Connected.",
    live_reconnecting: "Connection lost. Reconnecting.",
    live_offline: "Offline. What you write is sent when you are back online.",
    errName: "Enter a name.",
    errNameLong: "A name has at most 32 characters.",
    errNameChars: "Use only letters, digits, “_”, “-” and “.” (no spaces).",
    errConnect: "Could not log in as “{name}”: the server refused the name or cannot be reached.",
    refused: "Cannot log in as “{name}”: {reason}.",
    refused_taken: "“{name}” is taken. If it is yours, enter its password.",
    refused_taken_no_password:
      "“{name}” is taken, and it has no password: only the browser that claimed it can use it. Pick another name.",
    refused_lookalike: "“{name}” looks too much like someone else’s name. Pick another name.",
    refused_bad_token:
      "This browser’s sign-in as “{name}” is no longer valid (logged out elsewhere?). If the name has a password, enter it; if not, pick another name.",
    refused_just_claimed: "Someone claimed “{name}” at the same moment. Pick another name.",
    refused_claimed_legacy: "“{name}” is taken. Pick another name.",
    loggedOut: "You are logged out.",
    badLogin: "Wrong name or password.",
    tooManyTries: "Too many attempts. Try again later.",
    noPasswords: "This server does not support passwords.",
    loginFailed: "Could not log in ({status}).",
    unreachable: "Could not reach the server.",
    roomLabel: "Room {name}",
    privateLabel: "Private room {name}",
    dmLabel: "Direct messages with {name}, {state}",
    personLabel: "Message {name}, {state}",
    online: "online",
    offline: "offline",
    nUnread: ", {n} unread",
    nMentions: ", {n} mentioning you",
    leave: "Leave {name}",
    inviteFrom: "#{room}, from {by}",
    accept: "Join",
    dismiss: "Dismiss",
    empty: "No messages yet — say hello.",
    start: "Start of the conversation",
    loading: "Loading…",
    newMessages: "New messages",
    today: "Today",
    yesterday: "Yesterday",
    sending: "sending…",
    notSent: "not sent",
    retry: "Retry",
    discard: "Discard",
    msgRoom: "Message #{name}",
    msgDm: "Message {name}",
    typing1: "{a} is typing…",
    typing2: "{a} and {b} are typing…",
    typingN: "Several people are typing…",
    inviteTo: "Invite someone to #{room}",
    invited: "Invitation sent to {user}.",
    members1: "1 member",
    membersN: "{n} members",
    join: "Join",
    open: "Open",
    roomsNone: "No public rooms yet.",
    roomsUnavailable: "This server cannot list rooms.",
    privateUnsupported: "This server cannot make private rooms.",
    accountOf: "Logged in as {name}",
    accountBtn: "Account: {name}",
    pwSet: "A password is set: use it to log in on other devices.",
    pwNotSet: "No password yet. Set one to log in on other devices.",
    pwSaved: "Password saved.",
    pwShort: "A password has 8 to 200 characters.",
    logoutWarn:
      "You have no password: once you log out, nobody can log in as “{name}” again, you included. Set a password first.",
    notifyOn: "On: direct messages and mentions notify you while this tab is in the background.",
    notifyOff: "Off.",
    notifyBlocked: "Blocked in this browser’s site settings.",
    notifyNone: "This browser cannot show notifications.",
    notifyRoom: "{from} in #{room}",
    notConnected: "Not connected.",
    roomName: "Room name: {e}",
    tooLong: "A message has at most {n} characters.",
    frameTooBig: "too long",
    err_bad_name: "That name is not allowed.",
    err_too_large: "The message is too long.",
    err_unknown_user: "Nobody is called {user}.",
    err_not_member: "You are not in #{room}.",
    err_forbidden: "#{room} is private: you need an invitation.",
    err_room_exists: "#{room} already exists.",
    err_too_many_rooms: "You are in too many rooms.",
    err_rate_limited: "too fast: retry in {s}s",
    err_store_failed: "The server could not save it; try again.",
  },
  zh: {
    appName: "聊天",
    conversations: "会话",
    language: "语言",
    reconnectNow: "立即重连",
    loginTitle: "登录",
    yourName: "你的名字",
    nameHelp: "最多 32 个字母或数字（任何文字均可），以及 _ - .",
    password: "密码",
    optional: "（可选）",
    passwordHelp: "设置过密码才需要填写。第一次登录请留空：这个名字将在此浏览器中归你所有。",
    logIn: "登录",
    rooms: "房间",
    findRooms: "查找或创建房间",
    invitations: "邀请",
    dms: "私信",
    people: "用户",
    onlineCount: "{n} 人在线",
    showMore: "显示更多",
    noneYet: "暂无",
    nobodyElse: "还没有其他人",
    invite: "邀请",
    askNotify: "此标签页在后台时，收到私信或有人提到你，是否显示桌面通知？",
    turnOn: "开启",
    notNow: "以后再说",
    jumpLatest: "跳到最新",
    message: "消息",
    send: "发送",
    close: "关闭",
    joinOrCreate: "加入或创建房间",
    go: "前往",
    privateRoom: "私密：只有你邀请的人才能加入",
    publicRooms: "公开房间",
    account: "账户",
    newPassword: "新密码",
    setPassword: "设置密码",
    notifications: "通知",
    logOut: "退出登录",
    logOutEverywhere: "在所有设备上退出",
    inviteWho: "邀请谁？",
    st_idle: "未连接",
    st_connecting: "正在连接…",
    st_connected: "已连接",
    st_reconnecting: "{s} 秒后重新连接…",
    st_offline: "离线",
    live_connecting: "正在连接。",
    live_connected: "已连接。",
    live_reconnecting: "连接已断开，正在重新连接。",
    live_offline: "离线。你写的消息会在恢复联网后发送。",
    errName: "请输入名字。",
    errNameLong: "名字最多 32 个字符。",
    errNameChars: "只能使用字母、数字、“_”、“-” 和 “.”（不能有空格）。",
    errConnect: "无法以“{name}”登录：服务器拒绝了这个名字或无法访问。",
    refused: "无法以“{name}”登录（服务器：{reason}）。",
    refused_taken: "“{name}”已被占用。如果这是你的名字，请输入它的密码。",
    refused_taken_no_password:
      "“{name}”已被占用，而且没有设置密码：只有占用它的那个浏览器能使用。请换一个名字。",
    refused_lookalike: "“{name}”与别人的名字太像了。请换一个名字。",
    refused_bad_token:
      "此浏览器以“{name}”登录的凭据已失效（可能在别处退出了登录）。如果这个名字设置了密码，请输入密码；否则请换一个名字。",
    refused_just_claimed: "有人在同一时刻占用了“{name}”。请换一个名字。",
    refused_claimed_legacy: "“{name}”已被占用。请换一个名字。",
    loggedOut: "你已退出登录。",
    badLogin: "名字或密码错误。",
    tooManyTries: "尝试次数过多，请稍后再试。",
    noPasswords: "此服务器不支持密码。",
    loginFailed: "登录失败（{status}）。",
    unreachable: "无法连接到服务器。",
    roomLabel: "房间 {name}",
    privateLabel: "私密房间 {name}",
    dmLabel: "与 {name} 的私信，{state}",
    personLabel: "给 {name} 发消息，{state}",
    online: "在线",
    offline: "离线",
    nUnread: "，{n} 条未读",
    nMentions: "，{n} 条提到你",
    leave: "离开 {name}",
    inviteFrom: "#{room}，来自 {by}",
    accept: "加入",
    dismiss: "忽略",
    empty: "还没有消息——打个招呼吧。",
    start: "会话开始",
    loading: "正在加载…",
    newMessages: "新消息",
    today: "今天",
    yesterday: "昨天",
    sending: "发送中…",
    notSent: "未发送",
    retry: "重试",
    discard: "删除",
    msgRoom: "发消息到 #{name}",
    msgDm: "发消息给 {name}",
    typing1: "{a} 正在输入…",
    typing2: "{a} 和 {b} 正在输入…",
    typingN: "多人正在输入…",
    inviteTo: "邀请他人加入 #{room}",
    invited: "已向 {user} 发送邀请。",
    members1: "1 位成员",
    membersN: "{n} 位成员",
    join: "加入",
    open: "打开",
    roomsNone: "还没有公开房间。",
    roomsUnavailable: "此服务器无法列出房间。",
    privateUnsupported: "此服务器不支持私密房间。",
    accountOf: "当前登录：{name}",
    accountBtn: "账户：{name}",
    pwSet: "已设置密码：可用它在其他设备上登录。",
    pwNotSet: "尚未设置密码。设置后可在其他设备上登录。",
    pwSaved: "密码已保存。",
    pwShort: "密码长度为 8 到 200 个字符。",
    logoutWarn:
      "你还没有设置密码：退出后，包括你在内的任何人都无法再以“{name}”登录。请先设置密码。",
    notifyOn: "已开启：此标签页在后台时，私信和提到你的消息会通知你。",
    notifyOff: "已关闭。",
    notifyBlocked: "已在此浏览器的网站设置中被阻止。",
    notifyNone: "此浏览器无法显示通知。",
    notifyRoom: "{from}（#{room}）",
    notConnected: "未连接。",
    roomName: "房间名：{e}",
    tooLong: "一条消息最多 {n} 个字符。",
    frameTooBig: "太长",
    err_bad_name: "这个名字不可用。",
    err_too_large: "消息太长。",
    err_unknown_user: "没有叫 {user} 的用户。",
    err_not_member: "你不在 #{room} 中。",
    err_forbidden: "#{room} 是私密房间，需要邀请才能加入。",
    err_room_exists: "#{room} 已存在。",
    err_too_many_rooms: "你加入的房间太多了。",
    err_rate_limited: "发送太快：{s} 秒后重试",
    err_store_failed: "服务器未能保存，请重试。",
  },
};

// ---- constants and helpers ----------------------------------------------------------

const LOBBY = "lobby";
const PAGE = 50; // messages per history page
// Users per `online` page: ONLINE_PAGE_DEFAULT of lib/protocol.ts (tests/presence_scale_test.ts).
const ONLINE_PAGE = 200;
const CONTEXT = 10; // read messages shown above the first unread on a first load
const GROUP_GAP = 5 * 60_000; // one sender's messages closer than this form a group
const TYPING_EVERY = 3000; // send `typing` at most this often per conversation
const TYPING_SHOWN = 5000; // show someone as typing this long after their last `typing`
const READ_DELAY = 1000;
const PING_EVERY = 25000;
const BACKOFF_MIN = 500;
const BACKOFF_MAX = 15000;
const NAME_RE = /^[\p{L}\p{N}\p{M}_.-]+$/u;
const TOKEN_RE = /^[A-Za-z0-9_-]+$/;
// A link (http or https only) or an @mention. A mention starts where a name cannot
// continue, so an e-mail address is not one.
const RICH_RE =
  /\bhttps?:\/\/[^\s<>"'`\u3000-\u303f\uff01-\uff0f\uff1a-\uff20]+|(?<![\p{L}\p{N}\p{M}_.@/-])@[\p{L}\p{N}\p{M}_.-]+/giu;

const $ = (id) => document.getElementById(id);
const ui = {};
for (
  const id of [
    "menu",
    "status",
    "status-live",
    "reconnect",
    "lang",
    "me",
    "login",
    "name",
    "password",
    "login-error",
    "app",
    "sidebar",
    "browse",
    "rooms",
    "invites-s",
    "invites",
    "dms",
    "users",
    "title",
    "invite",
    "ask-notify",
    "notify-yes",
    "notify-no",
    "messages",
    "latest",
    "typing",
    "notice",
    "send-form",
    "composer",
    "rooms-dialog",
    "create-form",
    "create-name",
    "create-private",
    "create-msg",
    "public-status",
    "public-rooms",
    "account-dialog",
    "account-name",
    "pw-form",
    "pw-state",
    "pw-user",
    "pw-new",
    "pw-msg",
    "notify-state",
    "notify-enable",
    "logout-warn",
    "logout",
    "logout-all",
    "invite-dialog",
    "invite-h",
    "invite-form",
    "invite-user",
    "invite-msg",
    "people-list",
    "users-count",
    "users-more",
  ]
) ui[id.replace(/-(\w)/g, (_, c) => c.toUpperCase())] = $(id);
const list = ui.messages;

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
      if (v === null || v === undefined) localStorage.removeItem(k);
      else localStorage.setItem(k, v);
    } catch { /* storage full or disabled: keep going in memory */ }
  },
};

// Names are the same when equal after NFKC and case folding (the server's rule).
const fold = (s) => String(s).normalize("NFKC").toLowerCase();
const tokenKey = (name) => "chat.token." + fold(name);

function checkName(raw) {
  const name = String(raw).trim().normalize("NFC");
  const n = [...name].length;
  if (n === 0) return { error: t("errName") };
  if (n > 32) return { error: t("errNameLong") };
  if (!NAME_RE.test(name) || name === "." || name === "..") return { error: t("errNameChars") };
  return { name };
}

/** The newest client id's time and counter, so that each id sorts after the one before. */
let lastIdTime = 0;
let idCounter = 0;

/**
 * A client id for a send: a UUIDv7 (RFC 9562), the time in milliseconds first,
 * then a counter and random bits. Ids made later sort later, so the server's
 * index of them grows at one end (a random v4 UUID lands anywhere in it, and
 * made each message cost the server another page written: about twice the
 * store's work of a message). Within a millisecond, or when the clock steps
 * back, the 12-bit counter keeps them in order; it also works on plain http,
 * where `crypto.randomUUID` does not exist.
 */
function uuid() {
  let now = Date.now();
  if (now > lastIdTime) {
    lastIdTime = now;
    idCounter = 0;
  } else if (++idCounter > 0xfff) {
    lastIdTime++;
    idCounter = 0;
  }
  now = lastIdTime;
  const b = crypto.getRandomValues(new Uint8Array(16));
  for (let i = 5; i >= 0; i--) {
    b[i] = now % 256;
    now = Math.floor(now / 256);
  }
  b[6] = 0x70 | (idCounter >> 8);
  b[7] = idCounter & 0xff;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function el(tag, cls, parent) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (parent) parent.append(e);
  return e;
}

function button(cls, text, parent) {
  const b = el("button", cls, parent);
  b.type = "button";
  b.textContent = text;
  return b;
}

// ---- language -----------------------------------------------------------------

let lang = "en";
let locale = "en"; // the BCP 47 tag dates and numbers are formatted with
let fmt = {};

function t(key, params) {
  const s = STRINGS[lang][key] ?? STRINGS.en[key] ?? key;
  return params ? s.replace(/\{(\w+)\}/g, (_, k) => String(params[k] ?? "")) : s;
}

const langOf = (tag) => /^zh\b/i.test(tag) ? "zh" : /^en\b/i.test(tag) ? "en" : null;
const browserLangs = () => navigator.languages?.length ? navigator.languages : [navigator.language];

function pickLang() {
  const saved = store.get("chat.lang");
  if (Object.hasOwn(STRINGS, saved ?? "")) return saved;
  for (const tag of browserLangs()) {
    const l = langOf(tag ?? "");
    if (l) return l;
  }
  return "en";
}

function setLang(l) {
  lang = Object.hasOwn(STRINGS, l) ? l : "en";
  // Format dates like the browser's own variant of the language (en-GB: 24-hour clock).
  locale = browserLangs().find((tag) => langOf(tag ?? "") === lang) ??
    (lang === "zh" ? "zh-CN" : "en");
  const opts = (o) => new Intl.DateTimeFormat(locale, o);
  fmt = {
    time: opts({ hour: "numeric", minute: "2-digit" }),
    day: opts({ weekday: "long", month: "long", day: "numeric" }),
    dayYear: opts({ year: "numeric", month: "long", day: "numeric" }),
    full: opts({ dateStyle: "full", timeStyle: "medium" }),
  };
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  for (const e of document.querySelectorAll("[data-i18n-attr]")) {
    for (const pair of e.dataset.i18nAttr.split(",")) {
      const [attr, key] = pair.split("=");
      e.setAttribute(attr, t(key));
    }
  }
  ui.lang.value = lang;
}

// ---- state --------------------------------------------------------------------

let me = null; // the logged-in user, as the server spells it
let refusal = null; // {name, code, reason}: the login form's refusal, re-rendered on a language switch
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
let status = { state: "idle" };
let lastTyping = { key: "", at: 0 };
let wantOpen = null; // a room to open once its `joined` arrives
let createReq = null; // {room, private}: a `create` awaiting `joined` or an error
let roomsListed = null; // the public rooms of the last `rooms` answer
let account = null; // {password} from welcome; null: the server has no accounts
let limits = { maxTextLength: 4000, maxFrameBytes: 65536 };
let rooms = [LOBBY];
const privateRooms = new Set();
let invites = []; // [{room, by}]
const dms = new Set(); // peers with a DM conversation
const online = new Set();
const known = new Set(); // everyone seen: online, DM peers, senders
// Beyond `--welcome-online` the welcome lists a page of who is online: the count, whether more
// are online than listed, where the next page starts, and whether one was asked for.
const crowd = {
  count: 0,
  more: false,
  after: /** @type {string | undefined} */ (undefined),
  asked: false,
};
// The page of DMs last asked for (after which partner), and how many times its answer was
// refused: a refused page is asked again later, until it comes or the socket goes.
const dmsAsk = { after: /** @type {string | undefined} */ (undefined), tries: 0, timer: 0 };
/** @type {Map<string, Conv>} key "r:<room>" or "d:<peer>" */
const convs = new Map();
let current = "r:" + LOBBY;
/** Sends not yet acknowledged: {cid, key, text, ts, from, failed?, error?, el?, sentOn?} */
let pending = [];

/**
 * @typedef {{key: string, byId: Map<number, object>, order: object[], last: number,
 *   read: number, unread: number, seen: number, more: boolean, state: string,
 *   req: string|null, readTimer: number, draft: string|null, typing: Map<string, number>,
 *   divider: number|null, days: Map<string, HTMLElement>, initScroll: boolean}} Conv
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
      last: 0, // the newest id known to exist
      read: 0, // the newest id read (by any of my tabs)
      unread: 0,
      seen: 0, // the newest id this tab showed
      more: false, // older messages than the oldest held exist
      state: "idle", // idle | loading | ready
      req: null, // the history request in flight: "latest" | "older"
      readTimer: 0,
      draft: null,
      typing: new Map(),
      divider: null, // the "new messages" line goes above the first message after this id
      days: new Map(),
      initScroll: false,
    };
    convs.set(key, c);
  }
  return c;
}

function mentionsMe(text) {
  if (!me) return false;
  const mine = fold(me);
  for (const m of String(text).matchAll(RICH_RE)) {
    if (m[0][0] === "@" && mentionName(m[0].slice(1), mine) === mine) return true;
  }
  return false;
}

// A name may end in "." but a sentence often does: "@bob." is bob unless "bob." is me.
function mentionName(raw, mine) {
  const f = fold(raw);
  return f === mine ? f : f.replace(/[.]+$/, "");
}

// Unread messages that mention me, among those this page holds.
function mentionCount(c) {
  let n = 0;
  for (let i = c.order.length - 1; i >= 0 && c.order[i].id > c.read; i--) {
    const m = c.order[i];
    if (m.from !== me && (m.mention ??= mentionsMe(m.text))) n++;
  }
  return n;
}

// ---- pending messages and drafts survive reloads --------------------------------

function savePending() {
  if (!me) return;
  const out = pending.map(({ cid, key, text, ts, failed, err }) => ({
    cid,
    key,
    text,
    ts,
    failed,
    err,
  }));
  store.set("chat.pending." + me, out.length ? JSON.stringify(out) : null);
}

function loadPending() {
  pending = [];
  try {
    const saved = JSON.parse(store.get("chat.pending." + me) ?? "[]");
    for (const p of Array.isArray(saved) ? saved : []) {
      if (typeof p?.cid === "string" && /^[rd]:./.test(p.key) && typeof p.text === "string") {
        const err = p.err && typeof p.err === "object" ? p.err : undefined;
        pending.push({ ...p, from: me, ts: Number(p.ts) || Date.now(), failed: !!p.failed, err });
      }
    }
  } catch { /* a corrupt entry: start empty */ }
}

const draftKey = (key) => `chat.draft.${me}.${key}`;

function saveDraft(key, text) {
  conv(key).draft = text;
  store.set(draftKey(key), text || null);
}

// ---- connection -----------------------------------------------------------------

function setStatus(state, s) {
  const changed = state !== status.state;
  status = { state, s };
  ui.status.dataset.state = state;
  ui.status.textContent = t("st_" + state, { s });
  ui.reconnect.hidden = state !== "reconnecting";
  // The countdown changes every second: only a change of state is announced.
  if (changed) ui.statusLive.textContent = state === "idle" ? "" : t("live_" + state);
}

function connect() {
  clearTimeout(retryTimer);
  clearInterval(tickTimer);
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const token = store.get(tokenKey(me));
  const protocols = ["chat.v1"];
  if (token && TOKEN_RE.test(token)) protocols.push("token." + token);
  let sock;
  try {
    sock = new WebSocket(
      `${proto}://${location.host}/ws/${encodeURIComponent(me)}?resume`,
      protocols,
    );
  } catch {
    scheduleReconnect();
    return;
  }
  ws = sock;
  welcomed = false;
  setStatus("connecting");
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
  sock.onclose = (e) => {
    if (ws !== sock) return;
    if (e.code === 4003) refused(e.reason);
    else if (e.code === 4001) loggedOut();
    else dropped();
  };
}

function detach(sock) {
  sock.onmessage = sock.onclose = null;
  try {
    sock.close();
  } catch { /* already closing */ }
}

// The socket is gone (closed by the server, the network or a dead ping).
function dropped() {
  const sock = ws;
  ws = null;
  welcomed = false;
  clearInterval(pingTimer);
  if (sock) detach(sock);
  for (const p of pending) p.sentOn = null;
  for (const c of convs.values()) {
    c.req = null;
    if (c.state === "loading") c.state = c.order.length ? "ready" : "idle";
    for (const timer of c.typing.values()) clearTimeout(timer);
    c.typing.clear();
  }
  renderTyping();
  if (!me) return;
  if (!everWelcomed && fromForm) {
    const name = me;
    endSession();
    showLoginError(t("errConnect", { name }));
    return;
  }
  scheduleReconnect();
}

function scheduleReconnect() {
  clearTimeout(retryTimer);
  clearInterval(tickTimer);
  if (navigator.onLine === false) return setStatus("offline"); // `online` reconnects
  const base = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** attempt++);
  const delay = Math.round(base * (0.5 + Math.random() * 0.5));
  retryAt = Date.now() + delay;
  const tick = () =>
    setStatus("reconnecting", Math.max(1, Math.ceil((retryAt - Date.now()) / 1000)));
  tick();
  tickTimer = setInterval(tick, 250);
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
addEventListener("offline", () => {
  if (me && !ws) scheduleReconnect();
});

// ---- frames from the server ---------------------------------------------------------

function handle(f) {
  switch (f.type) {
    case "welcome":
      return onWelcome(f);
    case "message":
      return onMessage(f);
    case "resumed":
      return onResumed(f);
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
    case "online":
      return onOnline(f);
    case "dms":
      return onDms(f);
    case "invited":
      return onInvited(f);
    case "rooms":
      return onRooms(f);
    case "password_set":
      return onPasswordSet();
    case "error":
      return onError(f);
  }
}

function onWelcome(f) {
  me = typeof f.user === "string" ? f.user : me;
  if (typeof f.token === "string" && TOKEN_RE.test(f.token)) store.set(tokenKey(me), f.token);
  store.set("chat.user", me);
  welcomed = everWelcomed = true;
  attempt = 0;
  clearInterval(tickTimer);
  setStatus("connected");
  if (f.limits) limits = f.limits;
  account = f.account && typeof f.account === "object" ? f.account : null;
  ui.composer.maxLength = limits.maxTextLength;
  ui.me.textContent = me;
  ui.me.setAttribute("aria-label", t("accountBtn", { name: me }));
  ui.me.hidden = false;
  const first = ui.app.hidden;
  showApp();

  const names = (v) => (Array.isArray(v) ? v : []).filter((x) => typeof x === "string");
  rooms = [LOBBY, ...names(f.rooms).filter((r) => r !== LOBBY)].sort(roomOrder);
  privateRooms.clear();
  for (const r of names(f.privateRooms)) privateRooms.add(r);
  invites = (Array.isArray(f.invites) ? f.invites : []).filter((i) =>
    typeof i?.room === "string" && !rooms.includes(i.room)
  );
  online.clear();
  for (const u of names(f.online)) if (u !== me) online.add(u);
  for (const u of online) known.add(u);
  crowd.count = typeof f.onlineCount === "number" ? f.onlineCount : online.size + 1;
  crowd.more = f.onlineMore === true;
  crowd.after = typeof f.onlineAfter === "string" ? f.onlineAfter : undefined;
  crowd.asked = false;
  const summaries = Array.isArray(f.conversations) ? f.conversations : [];
  for (const s of summaries) summarize(s);
  if (isRoom(current) && !rooms.includes(nameOf(current))) current = "r:" + LOBBY;

  // Live messages are held until `resume`: send it first. It names every conversation:
  // one this page holds messages of from its newest, one it holds none of from a little
  // before its first unread (so the replay brings every unread message and some context).
  const points = [];
  const named = new Set();
  const add = (key) => {
    if (named.has(key) || points.length >= 1000) return;
    named.add(key);
    const c = conv(key);
    const after = c.order.length
      ? c.order.at(-1).id
      : Math.max(0, Math.min(c.read - CONTEXT, c.last - PAGE));
    if (!c.order.length) c.state = "loading"; // shown once `resumed` says it is all here
    c.req = null;
    points.push({ ...where(key, "with"), after });
  };
  for (const room of rooms) add("r:" + room);
  for (const s of summaries) add(keyOf(s));
  for (const [key, c] of convs) if (!isRoom(key) && c.order.length) add(key);
  send({ type: "resume", conversations: points });
  // A welcome lists a page of DMs; the others come page by page (their messages when opened).
  clearTimeout(dmsAsk.timer);
  dmsAsk.tries = 0;
  if (f.dmsMore === true) moreDms(typeof f.dmsAfter === "string" ? f.dmsAfter : undefined);

  clearInterval(pingTimer);
  pingTimer = setInterval(() => {
    if (Date.now() - lastRx > 2.5 * PING_EVERY) dropped();
    else send({ type: "ping" });
  }, PING_EVERY);

  // Unread messages in the open conversation (after a reload): a line above the first.
  const cc = conv(current);
  if (cc.divider === null && cc.unread > 0) {
    cc.divider = cc.read;
    cc.initScroll = true;
  }
  // Unacknowledged sends go again with the same cid: the server stores a (sender, cid)
  // once and answers a repeat with the original.
  for (const p of pending) if (!p.failed) transmit(p);
  open(current, first);
  if (first) askNotify();
}

// What a welcome or a `dms` page says of one conversation: where it stands, and who it is with.
function summarize(s) {
  const c = conv(keyOf(s));
  c.last = Math.max(c.last, s.last ?? 0);
  c.read = s.read ?? 0;
  c.unread = s.unread ?? 0;
  if (s.with !== undefined) {
    dms.add(s.with);
    known.add(s.with);
  }
}

// Asks for the DMs after `after` (in the server's order of names), a page of its default size.
function moreDms(after) {
  dmsAsk.after = after;
  send(after === undefined ? { type: "dms" } : { type: "dms", after });
}

// The server could not give that page (its store did not answer): the same page again, after
// 1 s, 2 s, 4 s… (at most BACKOFF_MAX), on this socket only: a new one's welcome starts over.
function retryDms() {
  const socket = ws;
  const delay = Math.min(BACKOFF_MAX, 1000 * 2 ** dmsAsk.tries++);
  clearTimeout(dmsAsk.timer);
  dmsAsk.timer = setTimeout(() => {
    if (ws === socket && welcomed) moreDms(dmsAsk.after);
  }, delay);
}

function onDms(f) {
  const page = (Array.isArray(f.conversations) ? f.conversations : []).filter((s) =>
    typeof s?.with === "string"
  );
  for (const s of page) summarize(s);
  dmsAsk.tries = 0;
  if (f.more === true && page.length) moreDms(page.at(-1).with);
  renderSidebar();
}

function addMsg(c, m) {
  if (typeof m.id !== "number" || c.byId.has(m.id)) return false;
  const msg = { id: m.id, from: String(m.from), text: String(m.text), ts: m.ts, cid: m.cid };
  known.add(msg.from);
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

// Drops the messages below `id` (an old run cut off by a gap the server did not replay).
function dropBelow(c, id) {
  const keep = c.order.filter((m) => m.id >= id);
  for (const m of c.order) if (m.id < id) c.byId.delete(m.id);
  c.order = keep;
}

function viewing(key) {
  return key === current && !ui.app.hidden && document.visibilityState === "visible";
}

function atBottom() {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
}

function onMessage(m) {
  if (typeof m.id !== "number" || typeof m.from !== "string") return;
  const key = keyOf(m);
  const c = conv(key);
  if (!isRoom(key)) dms.add(nameOf(key));
  const fresh = m.id > c.last; // not a replay of something counted in welcome
  if (!addMsg(c, m)) return;
  stopTyping(c, m.from);
  if (m.from === me && fresh) {
    // My own new message moves my read mark: all before it counts as read.
    c.read = Math.max(c.read, m.id);
    c.seen = Math.max(c.seen, m.id);
    c.unread = 0;
    if (key === current) c.divider = null;
  }
  if (key === current && c.state === "ready") renderMessages(m.from === me ? "bottom" : "auto");
  if (m.from !== me && fresh && m.id > c.read) {
    if (viewing(key) && atBottom()) markRead(c);
    else c.unread++;
    notify(c, m);
  }
  renderSidebar();
}

function onResumed(f) {
  const key = keyOf(f);
  const c = conv(key);
  // Older messages between `after` and `from` were not replayed: what this page held
  // before them is cut off, so it goes; scrolling up pages the rest with `history`.
  if (f.more && c.order.length && c.order[0].id <= f.after) dropBelow(c, f.from);
  c.state = "ready";
  c.more = c.order.length ? c.order[0].id > 1 : f.after > 0;
  loaded(c);
}

function onHistory(f) {
  const key = keyOf(f);
  const c = conv(key);
  const kind = c.req ?? "latest";
  c.req = null;
  const msgs = (Array.isArray(f.messages) ? f.messages : []).filter((m) =>
    typeof m?.id === "number"
  );
  const newest = c.order.at(-1)?.id ?? 0;
  // A page that does not meet what this page holds: drop the old run rather than show a gap.
  if (kind === "latest" && newest && msgs.length && msgs[0].id > newest + 1) dropBelow(c, Infinity);
  for (const m of msgs) addMsg(c, m);
  c.more = c.order.length > 0 && c.order[0].id > 1 && (kind === "latest" || !!f.more);
  c.state = "ready";
  if (kind === "older" && key === current) renderMessages("keep");
  else loaded(c);
}

// A conversation's messages have arrived: show them if it is open.
function loaded(c) {
  if (c.key === current) {
    renderMessages("auto");
    if (viewing(c.key) && atBottom()) markRead(c);
  }
  renderSidebar();
}

function onMembership(f) {
  if (typeof f.room !== "string" || typeof f.user !== "string") return;
  known.add(f.user);
  if (f.user !== me) return;
  const key = "r:" + f.room;
  if (f.type === "joined") {
    if (!rooms.includes(f.room)) rooms = [...rooms, f.room].sort(roomOrder);
    if (createReq?.room === f.room) {
      if (createReq.private) privateRooms.add(f.room);
      createReq = null;
    }
    if (invites.some((i) => i.room === f.room)) {
      privateRooms.add(f.room);
      invites = invites.filter((i) => i.room !== f.room);
    }
    if (wantOpen === f.room) {
      wantOpen = null;
      if (ui.roomsDialog.open) ui.roomsDialog.close();
      open(key);
    }
  } else {
    if (f.room === LOBBY) return;
    rooms = rooms.filter((r) => r !== f.room);
    privateRooms.delete(f.room);
    const c = conv(key);
    c.state = "idle";
    c.unread = 0;
    if (current === key) open("r:" + LOBBY);
  }
  renderSidebar();
  if (ui.roomsDialog.open) renderPublicRooms();
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
  if (typeof f.id !== "number") return;
  const c = conv(keyOf(f));
  c.read = Math.max(c.read, f.id);
  c.unread = c.read >= c.last ? 0 : Math.min(c.unread, c.last - c.read);
  renderSidebar();
}

/** The strings of a list from the server (anything else dropped). */
const strings = (v) => (Array.isArray(v) ? v : []).filter((x) => typeof x === "string");

/** A batch of presence changes: `{online: [...], offline: [...]}`, each a real change. */
function onPresence(f) {
  const came = strings(f.online).filter((u) => u !== me);
  const went = strings(f.offline).filter((u) => u !== me);
  for (const u of came) {
    known.add(u);
    online.add(u);
  }
  for (const u of went) {
    known.add(u);
    online.delete(u);
  }
  crowd.count = Math.max(online.size + 1, crowd.count + came.length - went.length);
  renderSidebar();
}

/** A page of who is online, asked for with "Show more". */
function onOnline(f) {
  const users = strings(f.users);
  for (const u of users) {
    if (u === me) continue;
    known.add(u);
    online.add(u);
  }
  crowd.more = f.more === true;
  if (users.length) crowd.after = users.at(-1);
  crowd.asked = false;
  crowd.count = Math.max(crowd.count, online.size + 1);
  renderSidebar();
}

function showMoreOnline() {
  if (crowd.asked || !crowd.more) return;
  if (send({ type: "online", after: crowd.after, limit: ONLINE_PAGE })) crowd.asked = true;
  renderSidebar();
}

function onInvited(f) {
  if (typeof f.room !== "string" || rooms.includes(f.room)) return;
  invites = [...invites.filter((i) => i.room !== f.room), { room: f.room, by: String(f.by) }];
  renderSidebar();
}

function onRooms(f) {
  roomsListed = Array.isArray(f.rooms) ? f.rooms.filter((r) => typeof r?.room === "string") : [];
  renderPublicRooms();
}

function onPasswordSet() {
  account = { ...account, password: true };
  ui.pwNew.value = "";
  renderAccount();
  ui.pwMsg.textContent = t("pwSaved");
}

function errorText(f) {
  const r = f.request ?? {};
  const key = "err_" + f.code;
  if (f.code === "frame_too_big") return t("frameTooBig");
  if (!Object.hasOwn(STRINGS.en, key)) return String(f.message || f.code);
  return t(key, {
    room: r.room ?? "",
    user: r.to ?? r.with ?? r.user ?? "",
    s: Math.max(1, Math.ceil((Number(f.retry_after) || 1000) / 1000)),
  });
}

function onError(f) {
  const p = typeof f.ref === "string" && pending.find((x) => x.cid === f.ref);
  if (p) {
    p.failed = true;
    p.err = { code: f.code, message: f.message, request: f.request, retry_after: f.retry_after };
    p.sentOn = null;
    // Too fast: Retry waits until the server will take it.
    const wait = f.code === "rate_limited" ? Number(f.retry_after) || 0 : 0;
    p.retryAt = Date.now() + wait;
    if (wait > 0) setTimeout(() => p.el && updateMsgEl(p), wait + 50);
    savePending();
    if (p.el) updateMsgEl(p);
    return;
  }
  const r = f.request ?? {};
  // An older server answers frames it does not know with `unknown_type`, naming the type.
  const unknown = f.code === "unknown_type" && /: (\w+)/.exec(String(f.message))?.[1];
  const type = r.type ?? unknown;
  if (type === "create" && createReq) {
    const { room, private: priv } = createReq;
    createReq = null;
    if (f.code === "room_exists" || (unknown && !priv)) {
      // It exists (or this server only knows `join`): join it.
      send({ type: "join", room });
      return;
    }
    wantOpen = null;
    ui.createMsg.textContent = unknown ? t("privateUnsupported") : errorText(f);
    return;
  }
  if (type === "join") {
    wantOpen = null;
    if (ui.roomsDialog.open) return void (ui.createMsg.textContent = errorText(f));
  }
  if (type === "rooms") {
    ui.publicStatus.textContent = t("roomsUnavailable");
    return;
  }
  if (type === "set_password") {
    ui.pwMsg.textContent = unknown ? t("noPasswords") : errorText(f);
    return;
  }
  if (type === "invite") {
    ui.inviteMsg.textContent = errorText(f);
    return;
  }
  if (type === "logout") return;
  // A page of DMs the page asked for by itself is asked again.
  if (type === "dms" && f.code === "store_failed") return retryDms();
  if (type === "resume" || type === "history" || type === "read") {
    // A room left in another tab while this one was away: forget it quietly.
    if (r.room !== undefined && f.code === "not_member") {
      onMembership({ type: "left", room: r.room, user: me });
      return;
    }
    const c = conv(keyOf(r));
    c.req = null;
    if (c.state === "loading") c.state = "ready";
  }
  notice(errorText(f));
}

// ---- actions -------------------------------------------------------------------------

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
    renderSidebar();
  }
}

function requestHistory(c, kind) {
  if (c.req) return;
  const frame = { type: "history", ...where(c.key, "with"), limit: PAGE };
  if (kind === "older") frame.before = c.order[0].id;
  if (!send(frame)) return;
  c.req = kind;
  if (kind === "latest") c.state = "loading";
}

function loadOlder() {
  const c = conv(current);
  if (c.more && !c.req && c.state === "ready" && c.order.length && welcomed) {
    requestHistory(c, "older");
    renderMessages("keep");
  }
}

function transmit(p) {
  if (p.sentOn && p.sentOn === ws) return;
  const frame = { type: "send", ...where(p.key, "to"), text: p.text, cid: p.cid };
  if (new TextEncoder().encode(JSON.stringify(frame)).length > limits.maxFrameBytes) {
    p.failed = true;
    p.err = { code: "frame_too_big" };
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
    notice(t("tooLong", { n: limits.maxTextLength }));
    return;
  }
  const p = { cid: uuid(), key: current, text, ts: Date.now(), from: me, failed: false };
  pending.push(p);
  ui.composer.value = "";
  saveDraft(current, "");
  lastTyping = { key: "", at: 0 };
  const c = conv(current);
  c.divider = null;
  transmit(p);
  renderMessages("bottom");
}

// Shows a conversation; `byUser` when a person asked for it (closes the phone
// sidebar, focuses the composer on wide screens).
function open(key, byUser = true) {
  if (key !== current) {
    saveDraft(current, ui.composer.value);
    ui.composer.value = conv(key).draft ?? store.get(draftKey(key)) ?? "";
  } else if (!ui.composer.value) {
    ui.composer.value = conv(key).draft ?? store.get(draftKey(key)) ?? "";
  }
  const switched = key !== current || !ui.title.textContent;
  current = key;
  store.set("chat.open." + me, key);
  const c = conv(key);
  if (!isRoom(key)) {
    dms.add(nameOf(key));
    known.add(nameOf(key));
  }
  if (switched || byUser) {
    c.divider = c.unread > 0 ? c.read : null;
    c.initScroll = true;
  }
  ui.title.textContent = nameOf(key);
  ui.title.className = isRoom(key)
    ? (privateRooms.has(nameOf(key)) ? "room private" : "room")
    : "dm";
  ui.invite.hidden = !privateRooms.has(nameOf(key)) || !isRoom(key);
  ui.composer.placeholder = t(isRoom(key) ? "msgRoom" : "msgDm", { name: nameOf(key) });
  if (byUser) toggleSidebar(false);
  if (c.state === "idle" && welcomed) requestHistory(c, "latest");
  renderMessages("auto");
  renderTyping();
  if (viewing(key) && c.state === "ready" && atBottom()) markRead(c, true);
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
  current = last && /^[rd]:./.test(last) ? last : "r:" + LOBBY;
  ui.loginError.textContent = "";
  if (!viaForm) {
    showApp();
    open(current, false);
  }
  connect();
}

// Back to the login form, forgetting everything of the session (not the stored
// token, pending messages or drafts: those are the caller's business).
function endSession(message = "") {
  refusal = null;
  const sock = ws;
  ws = null;
  if (sock) detach(sock);
  clearTimeout(retryTimer);
  clearTimeout(dmsAsk.timer);
  for (const timer of [tickTimer, pingTimer]) clearInterval(timer);
  for (const c of convs.values()) {
    clearTimeout(c.readTimer);
    for (const timer of c.typing.values()) clearTimeout(timer);
  }
  for (const d of [ui.roomsDialog, ui.accountDialog, ui.inviteDialog]) if (d.open) d.close();
  const name = me;
  // (Another tab may have logged in as someone else since: leave that be.)
  if (store.get("chat.user") === name) store.set("chat.user", null);
  me = null;
  welcomed = everWelcomed = false;
  account = null;
  rooms = [LOBBY];
  invites = [];
  for (const set of [privateRooms, dms, online, known]) set.clear();
  Object.assign(crowd, { count: 0, more: false, after: undefined, asked: false });
  convs.clear();
  pending = [];
  current = "r:" + LOBBY;
  ui.composer.value = "";
  ui.title.textContent = "";
  for (const e of [list, ui.rooms, ui.dms, ui.users, ui.invites]) e.replaceChildren();
  setStatus("idle");
  ui.me.hidden = ui.menu.hidden = true;
  ui.app.hidden = true;
  ui.login.hidden = false;
  ui.login.querySelector("button").disabled = false;
  ui.askNotify.hidden = true;
  document.title = t("appName");
  if (name) ui.name.value = name;
  ui.password.value = "";
  ui.loginError.textContent = message;
  ui.name.focus();
}

// Log out: the server forgets this device's token (or every token of mine), closing
// my sockets with 4001. This page forgets the token at once either way.
function logOut(everywhere) {
  const sock = ws;
  if (sock && welcomed && sock.readyState === WebSocket.OPEN) {
    sock.send(JSON.stringify({ type: "logout", everywhere }));
    // Let the server act on it before the socket goes.
    sock.onmessage = sock.onclose = null;
    setTimeout(() => sock.close(), 3000);
    ws = null;
  }
  const name = me;
  store.set(tokenKey(name), null);
  // What was written here goes too: the next person at this browser is not to see it.
  store.set("chat.pending." + name, null);
  try {
    for (const k of Object.keys(localStorage)) {
      if (k.startsWith(`chat.draft.${name}.`)) localStorage.removeItem(k);
    }
  } catch { /* storage disabled */ }
  endSession(t("loggedOut"));
}

// The server closed with 4001: this device (or every device) was logged out.
function loggedOut() {
  if (me) store.set(tokenKey(me), null);
  endSession(t("loggedOut"));
}

// Refusal codes the page has its own words for (the close reason is "<code>: <English>"): the
// REFUSAL_CODES of lib/protocol.ts, which tests/page_i18n_test.ts holds this list to.
const REFUSALS = new Set([
  "taken",
  "taken_no_password",
  "lookalike",
  "bad_token",
  "just_claimed",
  "claimed_legacy",
]);

function refusalText(r) {
  if (REFUSALS.has(r.code)) return t("refused_" + r.code, { name: r.name });
  return t("refused", { name: r.name, reason: r.reason });
}

// The server closed with 4003: the name is someone else's (or my token is no longer good).
function refused(closeReason) {
  const name = me;
  store.set(tokenKey(name), null);
  endSession();
  const m = /^([a-z_]+): (.*)$/s.exec(String(closeReason || ""));
  const code = m ? m[1] : "";
  const reason = (m ? m[2] : String(closeReason || "")).replace(/[.。]\s*$/, "");
  refusal = { name, code, reason };
  ui.loginError.textContent = refusalText(refusal);
  ui.name.setAttribute("aria-invalid", "true");
  // Only a password helps with a name that has one; otherwise the name is to change.
  (code === "taken" || code === "bad_token" ? ui.password : ui.name).focus();
}

async function passwordLogin(name, password) {
  let res;
  try {
    res = await fetch("/api/login", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user: name, password }),
    });
  } catch {
    return { error: t("unreachable") };
  }
  let body = {};
  try {
    body = await res.json();
  } catch { /* not JSON: the status says enough */ }
  if (res.ok && typeof body.token === "string" && TOKEN_RE.test(body.token)) {
    const user = typeof body.user === "string" ? body.user : name;
    store.set(tokenKey(user), body.token);
    return { user };
  }
  if (res.status === 401) return { error: t("badLogin") };
  if (res.status === 429) return { error: t("tooManyTries") };
  if (res.status === 404 || res.status === 405) return { error: t("noPasswords") };
  return { error: t("loginFailed", { status: res.status }) };
}

function showApp() {
  if (!ui.app.hidden) return;
  ui.login.hidden = true;
  ui.app.hidden = false;
  ui.menu.hidden = false;
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

function openRoom(room) {
  if (rooms.includes(room)) {
    if (ui.roomsDialog.open) ui.roomsDialog.close();
    return open("r:" + room);
  }
  if (!send({ type: "join", room })) return void (ui.createMsg.textContent = t("notConnected"));
  wantOpen = room;
}

// ---- notifications ---------------------------------------------------------------------

const canNotify = () => "Notification" in globalThis;

// Asked once, politely: a line above the conversation, never the browser's prompt on load.
function askNotify() {
  ui.askNotify.hidden = !canNotify() || Notification.permission !== "default" ||
    store.get("chat.notify.asked") === "1";
}

async function enableNotify() {
  store.set("chat.notify.asked", "1");
  ui.askNotify.hidden = true;
  try {
    await Notification.requestPermission();
  } catch { /* an old browser: callbacks only; nothing to do */ }
  renderAccount();
}

// A DM or a mention that arrives while this tab is in the background.
function notify(c, m) {
  if (!canNotify() || Notification.permission !== "granted") return;
  if (document.visibilityState !== "hidden") return;
  if (isRoom(c.key) && !mentionsMe(m.text)) return;
  try {
    const n = new Notification(
      isRoom(c.key) ? t("notifyRoom", { from: m.from, room: nameOf(c.key) }) : m.from,
      { body: m.text.slice(0, 300), tag: c.key, lang: document.documentElement.lang },
    );
    n.onclick = () => {
      focus();
      if (me) open(c.key);
      n.close();
    };
  } catch { /* e.g. Android Chrome wants a service worker: no notification then */ }
}

// ---- rendering --------------------------------------------------------------------------

// Message text: links (http and https only) and @mentions; everything else is text.
function renderText(parent, text) {
  const mine = me ? fold(me) : "";
  let at = 0;
  for (const match of text.matchAll(RICH_RE)) {
    let s = match[0];
    if (s[0] === "@") {
      const raw = s.slice(1);
      const f = mentionName(raw, mine);
      s = "@" + (f === fold(raw) ? raw : raw.replace(/[.]+$/, ""));
      if (s.length < 2) continue;
      parent.append(text.slice(at, match.index));
      el("span", f === mine ? "mention me" : "mention", parent).textContent = s;
    } else {
      // Trailing punctuation ends a sentence, not the URL (a ")" closing a "(" in it stays).
      while (/[.,;:!?'")\]}>*]$/.test(s)) {
        if (s.endsWith(")") && s.split("(").length > s.split(")").length - 1) break;
        s = s.slice(0, -1);
      }
      let url;
      try {
        url = new URL(s);
      } catch {
        continue;
      }
      if (url.protocol !== "http:" && url.protocol !== "https:") continue;
      parent.append(text.slice(at, match.index));
      const a = el("a", "", parent);
      a.href = url.href;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      a.textContent = s;
    }
    at = match.index + s.length;
  }
  parent.append(text.slice(at));
}

function msgEl(m) {
  const root = el("div", "msg");
  const meta = el("div", "meta", root);
  el("span", "from", meta);
  el("time", "time", meta);
  el("span", "state", meta);
  renderText(el("div", "text", root), m.text);
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
  root.classList.toggle("at-me", m.from !== me && (m.mention ??= mentionsMe(m.text)));
  if (isPending) delete root.dataset.id;
  else root.dataset.id = String(m.id);
  if (m.cid) root.dataset.cid = m.cid;
  root.querySelector(".from").textContent = m.from;
  const time = root.querySelector(".time");
  const d = new Date(m.ts);
  if (!isNaN(d)) {
    time.textContent = fmt.time.format(d);
    time.dateTime = d.toISOString();
    time.title = fmt.full.format(d);
  }
  const state = root.querySelector(".state");
  state.replaceChildren();
  if (isPending && m.failed) {
    state.append(`${t("notSent")}${m.err ? ` (${errorText(m.err)})` : ""} `);
    const retry = button("retry", t("retry"), state);
    retry.dataset.action = "retry";
    retry.disabled = Date.now() < (m.retryAt ?? 0);
    button("discard", t("discard"), state).dataset.action = "discard";
  } else if (isPending) {
    state.textContent = t("sending");
  }
}

const dayKey = (d) => `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;

function dayLabel(d) {
  const now = new Date();
  if (dayKey(d) === dayKey(now)) return t("today");
  const y = new Date(now);
  y.setDate(now.getDate() - 1);
  if (dayKey(d) === dayKey(y)) return t("yesterday");
  return (d.getFullYear() === now.getFullYear() ? fmt.day : fmt.dayYear).format(d);
}

const topNote = el("p", "top-note");
const divider = el("div", "divider");
divider.setAttribute("role", "separator");
el("span", "", divider);
let quietTimer = 0;

// Keeps `parent`'s children exactly `nodes`, moving as few as it can (so focus
// and scroll positions survive updates).
function syncChildren(parent, nodes) {
  let cursor = parent.firstChild;
  for (const node of nodes) {
    if (node === cursor) cursor = cursor.nextSibling;
    else parent.insertBefore(node, cursor);
  }
  while (cursor) {
    const next = cursor.nextSibling;
    cursor.remove();
    cursor = next;
  }
}

/**
 * Shows the open conversation. `mode`: "bottom" scrolls to the newest message,
 * "auto" stays at the bottom if the view was there, "keep" keeps the messages in
 * view where they are while older ones are added above.
 */
function renderMessages(mode) {
  const c = conv(current);
  const wasAtBottom = atBottom();
  // What the reader is looking at: the text of the topmost message in view. With
  // "keep" it stays exactly where it is on screen, whatever changes above it.
  let anchor = null;
  let anchorAt = 0;
  if (mode === "keep") {
    for (const text of list.querySelectorAll(".msg > .text")) {
      if (text.offsetTop + text.offsetHeight > list.scrollTop) {
        anchor = text;
        anchorAt = text.offsetTop - list.scrollTop;
        break;
      }
    }
  }
  const ready = c.state === "ready";
  const shown = ready || c.order.length > 0;
  if (list.dataset.key !== c.key || mode === "keep") {
    // A new conversation or older history: not news for screen readers.
    list.setAttribute("aria-live", "off");
    clearTimeout(quietTimer);
    quietTimer = setTimeout(() => list.setAttribute("aria-live", "polite"), 200);
  }
  const switched = list.dataset.key !== c.key;
  list.dataset.key = c.key;
  list.setAttribute("aria-busy", String(!ready || !!c.req));

  const items = shown ? [...c.order] : [];
  for (const p of pending) if (p.key === current) items.push(p);
  topNote.textContent = !ready || c.req === "older"
    ? t("loading")
    : c.more
    ? ""
    : items.length
    ? t("start")
    : t("empty");
  const nodes = [topNote];
  let prev = null;
  let day = "";
  let dividerShown = false;
  for (const m of items) {
    const d = new Date(m.ts);
    const k = isNaN(d) ? day : dayKey(d);
    if (k !== day) {
      day = k;
      let sep = c.days.get(k);
      if (!sep) {
        sep = el("h3", "day");
        c.days.set(k, sep);
      }
      sep.textContent = dayLabel(d);
      nodes.push(sep);
      prev = null;
    }
    if (!dividerShown && c.divider !== null && m.id > c.divider && m.from !== me) {
      divider.firstChild.textContent = t("newMessages");
      nodes.push(divider);
      dividerShown = true;
      prev = null;
    }
    const node = m.el ?? msgEl(m);
    node.classList.toggle("cont", !!prev && prev.from === m.from && m.ts - prev.ts < GROUP_GAP);
    nodes.push(node);
    prev = m;
  }
  syncChildren(list, nodes);

  if (c.initScroll && ready) {
    // First view of the conversation: its first unread message, or the newest.
    c.initScroll = false;
    const top = dividerShown ? divider.offsetTop - 8 : Infinity;
    list.scrollTop = Math.min(top, list.scrollHeight);
  } else if (mode === "bottom" || switched || (mode === "auto" && wasAtBottom)) {
    list.scrollTop = list.scrollHeight;
  } else if (mode === "keep" && anchor?.isConnected) {
    list.scrollTop = anchor.offsetTop - anchorAt;
  }
  renderLatest();
  // Not enough to scroll yet: fetch older pages until there is.
  if (c.more && !c.req && ready && list.scrollHeight <= list.clientHeight) loadOlder();
}

// The "jump to latest" button: shown when the newest messages are out of view.
function renderLatest() {
  const c = conv(current);
  const away = !atBottom();
  ui.latest.hidden = !away;
  const badge = ui.latest.querySelector(".badge");
  badge.textContent = String(c.unread);
  badge.hidden = !away || !c.unread;
}

function renderTyping() {
  const who = [...conv(current).typing.keys()];
  ui.typing.textContent = who.length === 0
    ? ""
    : who.length === 1
    ? t("typing1", { a: who[0] })
    : who.length === 2
    ? t("typing2", { a: who[0], b: who[1] })
    : t("typingN");
}

// Keeps a list's items (keyed by a data attribute) in order, reusing elements
// so focus survives updates.
function syncList(ul, attr, names, fill) {
  const have = new Map([...ul.children].map((li) => [li.dataset[attr], li]));
  const nodes = [];
  for (const name of names) {
    let li = have.get(name);
    if (!li) {
      li = el("li");
      li.dataset[attr] = name;
      const btn = el("button", "open", li);
      btn.type = "button";
      el("span", "dot", btn).setAttribute("aria-hidden", "true");
      el("span", "label", btn).textContent = name;
      el("span", "mentions", btn).setAttribute("aria-hidden", "true");
      el("span", "badge", btn).setAttribute("aria-hidden", "true");
    }
    fill(li, name);
    nodes.push(li);
  }
  syncChildren(ul, nodes);
}

function setItem(li, key, label, markCurrent = true) {
  const c = convs.get(key);
  const n = c?.unread ?? 0;
  const at = c && n ? mentionCount(c) : 0;
  const btn = li.querySelector(".open");
  const badge = li.querySelector(".badge");
  badge.textContent = n > 99 ? "99+" : String(n);
  badge.hidden = n === 0;
  const mentions = li.querySelector(".mentions");
  mentions.textContent = "@" + (at > 1 ? at : "");
  mentions.hidden = at === 0;
  btn.setAttribute(
    "aria-label",
    label + (n ? t("nUnread", { n }) : "") + (at ? t("nMentions", { n: at }) : ""),
  );
  if (markCurrent && key === current) btn.setAttribute("aria-current", "true");
  else btn.removeAttribute("aria-current");
  return at;
}

function renderSidebar() {
  let total = 0;
  let mentionsTotal = 0;
  syncList(ui.rooms, "room", rooms, (li, room) => {
    const priv = privateRooms.has(room);
    li.classList.toggle("private", priv);
    mentionsTotal += setItem(
      li,
      "r:" + room,
      t(priv ? "privateLabel" : "roomLabel", { name: room }),
    );
    let leave = li.querySelector(".leave");
    if (room !== LOBBY && !leave) {
      leave = button("leave", "×", li);
      leave.dataset.action = "leave";
    }
    if (leave) {
      leave.setAttribute("aria-label", t("leave", { name: room }));
      leave.title = t("leave", { name: room });
    }
  });
  const state = (u) => t(online.has(u) ? "online" : "offline");
  syncList(ui.dms, "dm", [...dms].sort(cmp), (li, user) => {
    li.classList.toggle("online", online.has(user));
    mentionsTotal += setItem(li, "d:" + user, t("dmLabel", { name: user, state: state(user) }));
  });
  // People: online first, then everyone else this page has met.
  const people = [...known].filter((u) => u !== me).sort((a, b) =>
    (online.has(b) - online.has(a)) || cmp(a, b)
  );
  syncList(ui.users, "user", people, (li, user) => {
    li.classList.toggle("online", online.has(user));
    setItem(li, "d:" + user, t("personLabel", { name: user, state: state(user) }), false);
    li.querySelector(".badge").hidden = li.querySelector(".mentions").hidden = true;
  });
  // With more online than listed, the count and a way to list more.
  ui.usersCount.hidden = !crowd.more;
  ui.usersCount.textContent = t("onlineCount", { n: crowd.count.toLocaleString(lang) });
  ui.usersMore.hidden = !crowd.more;
  ui.usersMore.disabled = crowd.asked;
  ui.peopleList.replaceChildren(...people.map((u) => {
    const o = el("option");
    o.value = u;
    return o;
  }));
  ui.invitesS.hidden = invites.length === 0;
  const have = new Map([...ui.invites.children].map((li) => [li.dataset.invite, li]));
  syncChildren(
    ui.invites,
    invites.map(({ room, by }) => {
      let li = have.get(room);
      if (!li) {
        li = el("li", "invite");
        li.dataset.invite = room;
        el("span", "label", li);
        button("small", "", li).dataset.action = "accept";
        button("small", "", li).dataset.action = "dismiss";
      }
      const [label, accept, dismiss] = li.children;
      label.textContent = t("inviteFrom", { room, by });
      accept.textContent = t("accept");
      accept.setAttribute("aria-label", `${t("accept")} #${room}`);
      dismiss.textContent = t("dismiss");
      dismiss.setAttribute("aria-label", `${t("dismiss")} #${room}`);
      return li;
    }),
  );
  for (const [key, c] of convs) {
    if (isRoom(key) ? rooms.includes(nameOf(key)) : dms.has(nameOf(key))) total += c.unread;
  }
  document.title = (total ? `(${total}) ` : "") + (mentionsTotal ? "@ " : "") + t("appName");
  const mb = ui.menu.querySelector(".badge");
  mb.textContent = String(total);
  mb.hidden = total === 0;
  if (!ui.latest.hidden) renderLatest();
}

function renderPublicRooms() {
  if (!roomsListed) return;
  ui.publicStatus.textContent = roomsListed.length ? "" : t("roomsNone");
  const sorted = [...roomsListed].sort((a, b) => (b.members - a.members) || cmp(a.room, b.room));
  ui.publicRooms.replaceChildren(...sorted.map(({ room, members }) => {
    const li = el("li");
    li.dataset.room = room;
    el("span", "label", li).textContent = room;
    const n = Number(members) || 0;
    el("span", "help", li).textContent = t(n === 1 ? "members1" : "membersN", { n });
    const b = button("small", t(rooms.includes(room) ? "open" : "join"), li);
    b.dataset.action = "join";
    b.setAttribute("aria-label", `${b.textContent} #${room}`);
    return li;
  }));
}

function renderAccount() {
  ui.accountName.textContent = t("accountOf", { name: me ?? "" });
  ui.pwUser.value = me ?? "";
  const has = account?.password === true;
  ui.pwState.textContent = !account ? t("noPasswords") : has ? t("pwSet") : t("pwNotSet");
  for (const e of ui.pwForm.querySelectorAll("input:not(#pw-user), button")) {
    e.disabled = !account;
  }
  ui.logoutWarn.hidden = !account || has;
  ui.logoutWarn.textContent = t("logoutWarn", { name: me ?? "" });
  const p = canNotify() ? Notification.permission : "none";
  ui.notifyState.textContent = t(
    p === "granted"
      ? "notifyOn"
      : p === "denied"
      ? "notifyBlocked"
      : p === "none"
      ? "notifyNone"
      : "notifyOff",
  );
  ui.notifyEnable.hidden = p !== "default";
}

// Everything with words in it, again (the language changed).
function rerender() {
  setStatus(status.state, status.s);
  if (me) {
    ui.me.setAttribute("aria-label", t("accountBtn", { name: me }));
    for (const c of convs.values()) {
      for (const m of c.order) if (m.el) updateMsgEl(m);
    }
    for (const p of pending) if (p.el) updateMsgEl(p);
    ui.composer.placeholder = t(isRoom(current) ? "msgRoom" : "msgDm", { name: nameOf(current) });
    renderMessages("auto");
    renderTyping();
    renderSidebar();
    renderPublicRooms();
    renderAccount();
  } else {
    document.title = t("appName");
    if (refusal && ui.loginError.textContent !== "") {
      ui.loginError.textContent = refusalText(refusal);
    }
  }
}

// ---- events ------------------------------------------------------------------------------

ui.lang.addEventListener("change", () => {
  store.set("chat.lang", ui.lang.value);
  setLang(ui.lang.value);
  rerender();
});

ui.login.addEventListener("submit", async (e) => {
  e.preventDefault();
  const r = checkName(ui.name.value);
  if (r.error) return showLoginError(r.error);
  ui.name.removeAttribute("aria-invalid");
  ui.loginError.textContent = "";
  refusal = null;
  const submitBtn = ui.login.querySelector("button");
  submitBtn.disabled = true;
  let name = r.name;
  if (ui.password.value) {
    const result = await passwordLogin(name, ui.password.value);
    if (result.error) {
      submitBtn.disabled = false;
      ui.loginError.textContent = result.error;
      ui.password.focus();
      return;
    }
    name = result.user;
    ui.password.value = "";
  }
  setStatus("connecting");
  login(name, true);
});

ui.reconnect.addEventListener("click", () => {
  if (me && !ws) connect();
});

ui.menu.addEventListener("click", () => toggleSidebar());

ui.me.addEventListener("click", () => {
  renderAccount();
  ui.pwMsg.textContent = "";
  ui.accountDialog.showModal();
});

ui.usersMore.addEventListener("click", showMoreOnline);
ui.browse.addEventListener("click", () => {
  ui.createMsg.textContent = "";
  ui.publicStatus.textContent = t("loading");
  roomsListed = null;
  ui.publicRooms.replaceChildren();
  ui.roomsDialog.showModal();
  if (!send({ type: "rooms" })) ui.publicStatus.textContent = t("notConnected");
});

ui.invite.addEventListener("click", () => {
  ui.inviteH.textContent = t("inviteTo", { room: nameOf(current) });
  ui.inviteMsg.textContent = "";
  ui.inviteDialog.dataset.room = nameOf(current);
  ui.inviteDialog.showModal();
});

for (const d of [ui.roomsDialog, ui.accountDialog, ui.inviteDialog]) {
  d.querySelector(".close").addEventListener("click", () => d.close());
}

addEventListener("keydown", (e) => {
  if (e.key === "Escape" && ui.app.classList.contains("nav-open")) {
    toggleSidebar(false);
    ui.menu.focus();
  }
});

ui.sidebar.addEventListener("click", (e) => {
  const li = e.target.closest("li");
  if (!li) return;
  const action = e.target.closest("button[data-action]")?.dataset.action;
  if (li.dataset.room !== undefined) {
    if (action === "leave") {
      if (!send({ type: "leave", room: li.dataset.room })) notice(t("notConnected"));
    } else open("r:" + li.dataset.room);
  } else if (li.dataset.dm !== undefined) open("d:" + li.dataset.dm);
  else if (li.dataset.user !== undefined) open("d:" + li.dataset.user);
  else if (li.dataset.invite !== undefined) {
    const room = li.dataset.invite;
    if (action === "accept") {
      if (!send({ type: "join", room })) return notice(t("notConnected"));
      wantOpen = room;
    } else if (action === "dismiss") {
      invites = invites.filter((i) => i.room !== room);
      renderSidebar();
    }
  }
});

ui.createForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const r = checkName(ui.createName.value);
  if (r.error) return void (ui.createMsg.textContent = t("roomName", { e: r.error }));
  ui.createMsg.textContent = "";
  const priv = ui.createPrivate.checked;
  if (rooms.includes(r.name) || (!priv && roomsListed?.some((x) => x.room === r.name))) {
    ui.createName.value = "";
    return openRoom(r.name);
  }
  if (!send({ type: "create", room: r.name, private: priv })) {
    return void (ui.createMsg.textContent = t("notConnected"));
  }
  createReq = { room: r.name, private: priv };
  wantOpen = r.name;
  ui.createName.value = "";
  ui.createPrivate.checked = false;
});

ui.publicRooms.addEventListener("click", (e) => {
  const room = e.target.closest("button[data-action]")?.closest("li")?.dataset.room;
  if (room !== undefined) openRoom(room);
});

ui.inviteForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const r = checkName(ui.inviteUser.value);
  if (r.error) return void (ui.inviteMsg.textContent = r.error);
  if (!send({ type: "invite", room: ui.inviteDialog.dataset.room, user: r.name })) {
    return void (ui.inviteMsg.textContent = t("notConnected"));
  }
  ui.inviteMsg.textContent = t("invited", { user: r.name });
  ui.inviteUser.value = "";
});

ui.pwForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const pw = ui.pwNew.value;
  if (pw.length < 8 || pw.length > 200) return void (ui.pwMsg.textContent = t("pwShort"));
  if (!send({ type: "set_password", password: pw })) {
    return void (ui.pwMsg.textContent = t("notConnected"));
  }
  ui.pwMsg.textContent = t("loading");
});

ui.logout.addEventListener("click", () => logOut(false));
ui.logoutAll.addEventListener("click", () => logOut(true));
ui.notifyYes.addEventListener("click", enableNotify);
ui.notifyEnable.addEventListener("click", enableNotify);
ui.notifyNo.addEventListener("click", () => {
  store.set("chat.notify.asked", "1");
  ui.askNotify.hidden = true;
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
  saveDraft(current, ui.composer.value);
  const now = Date.now();
  if (!ui.composer.value.trim()) return;
  if (lastTyping.key === current && now - lastTyping.at < TYPING_EVERY) return;
  if (send({ type: "typing", ...where(current, "to") })) lastTyping = { key: current, at: now };
});

list.addEventListener("scroll", () => {
  if (list.scrollTop < 200) loadOlder();
  renderLatest();
  const c = conv(current);
  if (c.unread && viewing(current) && atBottom()) markRead(c);
}, { passive: true });

ui.latest.addEventListener("click", () => {
  list.scrollTop = list.scrollHeight;
  const c = conv(current);
  if (viewing(current)) markRead(c, true);
  renderLatest();
  ui.composer.focus();
});

list.addEventListener("click", (e) => {
  const btn = e.target.closest("button[data-action]");
  const cid = btn?.closest(".msg")?.dataset.cid;
  const p = cid && pending.find((x) => x.cid === cid);
  if (!p) return;
  if (btn.dataset.action === "retry") {
    p.failed = false;
    p.err = undefined;
    transmit(p);
    ui.composer.focus();
  } else {
    pending.splice(pending.indexOf(p), 1);
    savePending();
    renderMessages("auto");
  }
});

document.addEventListener("visibilitychange", () => {
  if (!me || !viewing(current)) return;
  const c = conv(current);
  // Back to the tab: a line above what came in meanwhile.
  if (c.unread && c.divider === null) {
    c.divider = c.read;
    renderMessages("auto");
  }
  if (atBottom()) markRead(c);
});

// Another tab logged out: so does this one.
addEventListener("storage", (e) => {
  if (e.key === "chat.user" && e.newValue === null && e.oldValue === me && me) {
    endSession(t("loggedOut"));
  }
});

// Leaving the page: send the `read` frames still waiting for their second.
addEventListener("pagehide", () => {
  for (const c of convs.values()) if (c.readTimer) sendRead(c);
});

// ---- start -------------------------------------------------------------------------------

setLang(pickLang());
document.title = t("appName");
setStatus("idle");
const saved = store.get("chat.user");
const savedName = saved && checkName(saved).name;
if (savedName) login(savedName, false);
else ui.name.focus();
