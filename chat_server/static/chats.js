// The chat list: the user's chats with their last message, unread count and who is online,
// loaded a page at a time as the list is scrolled; which one is selected; and the read markers
// the page sends.
//
// State (this module is its only writer): `chats`, id -> chat as the page keeps it (see
// `chatFromApi`); `nextCursor`, where the next page of the server's list starts (null once all
// is loaded); `selectedId`, the chat open in the conversation pane; the read markers sent and
// pending. Invariant: a chat's `seen` is the newest message id heard of in it, from the list or
// the stream, and never goes back. A message in a chat not loaded yet reloads the first page,
// where that chat now is (the server lists by latest activity).

import { $, span } from "./dom.js";
import { api } from "./api.js";
import { emit, on } from "./events.js";
import { handleAuth, me, currentGeneration, isCurrent } from "./session.js";
import { when } from "./dates.js";
import { isTyping } from "./typing.js";
import { isLive } from "./connection.js";

const READ_DELAY_MS = 150; // read markers of a burst of messages go out as one request
const RELOAD_DELAY_MS = 300; // chats heard of on the stream: one list reload for a burst
const PAGE = 50; // chats a page (the server's default)
const NEAR_END_PX = 200; // the next page is asked for this close to the list's end

const list = $("chats");

let chats = new Map();
let listLoaded = false;
let nextCursor = null;
let loadingMore = false;
let selectedId = null;
let readSent = new Map(); // chat id -> highest marker the server confirmed
let readPending = new Map();
let readTimer = null;
let reloadTimer = null;
// Presence heard on the stream, newest per user, numbered: a list read while it was heard may
// be older than it (a reconnect reads the list while partners' streams come back), so a list
// applied later keeps what was heard after it was asked for.
let presenceHeard = new Map(); // user id -> {online, at}
let presenceClock = 0;

on("logout", () => {
  clearTimeout(readTimer);
  clearTimeout(reloadTimer);
  chats = new Map();
  listLoaded = false;
  nextCursor = null;
  loadingMore = false;
  selectedId = null;
  readSent = new Map();
  readPending = new Map();
  readTimer = null;
  reloadTimer = null;
  presenceHeard = new Map();
  list.replaceChildren();
});
on("typing", () => render());
on("mode", () => render()); // presence dots are only claimed while live

// -- reading the list --------------------------------------------------------------

export function get(id) {
  return chats.get(id);
}

/** Messages of others not read yet, over all chats. */
export function unreadTotal() {
  let total = 0;
  for (const chat of chats.values()) total += chat.unread;
  return total;
}

export function isLoaded() {
  return listLoaded;
}

/** The newest message id in any chat: where a new stream starts. */
export function newestSeen() {
  let newest = 0;
  for (const chat of chats.values()) newest = Math.max(newest, chat.seen);
  return newest;
}

/** The first page of the list (again, after a reconnect or a chat heard of on the stream). */
export async function load() {
  const generation = currentGeneration();
  const asked = presenceClock;
  const answer = await api("GET", `/api/chats?limit=${PAGE}`);
  if (!isCurrent(generation)) return;
  // The first time, the next page starts after this one; later, after the deepest page loaded.
  if (!listLoaded) nextCursor = answer.next_cursor;
  applyChatList(answer.chats, asked);
}

/** The next page, when the list is scrolled near its end (or does not fill the pane yet). */
async function loadMore() {
  if (loadingMore || nextCursor === null || !listLoaded) return;
  loadingMore = true;
  const generation = currentGeneration();
  const asked = presenceClock;
  try {
    const answer = await api("GET", `/api/chats?limit=${PAGE}&cursor=${encodeURIComponent(nextCursor)}`);
    if (!isCurrent(generation)) return;
    nextCursor = answer.next_cursor;
    applyChatList(answer.chats, asked);
  } catch (err) {
    await handleAuth(err); // otherwise the next scroll asks again
  } finally {
    loadingMore = false;
  }
}

function nearEnd() {
  return list.scrollTop + list.clientHeight >= list.scrollHeight - NEAR_END_PX;
}

list.addEventListener("scroll", () => {
  if (nearEnd()) loadMore();
});

/** Chats found elsewhere (a search), kept like any page's: the list then has them too. */
export function addFromApi(found) {
  applyChatList(found);
}

function reloadSoon() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(() => load().catch(handleAuth), RELOAD_DELAY_MS);
}

/** Merge chats of the server's list, keeping what the stream counted since it was read and who
it said came or went since the list was asked for (`asked`, the presence clock then). */
function applyChatList(answer, asked = presenceClock) {
  const next = new Map(chats);
  const toMark = [];
  for (const c of answer) {
    const old = chats.get(c.id);
    const chat = chatFromApi(c, old ? old.lastRead : 0);
    if (old && old.seen > chat.seen) {
      // The stream brought messages after this list was read: keep what they counted.
      const { last_message, unread, seen, counted } = old;
      Object.assign(chat, { last_message, unread, seen, counted });
    }
    for (const p of chat.participants) {
      const heard = presenceHeard.get(p.id);
      if (heard && heard.at > asked) p.online = heard.online;
    }
    if (chat.unread > 0 && isReading(chat.id)) toMark.push(chat);
    next.set(chat.id, chat);
  }
  chats = next;
  listLoaded = true;
  for (const chat of toMark) markRead(chat.id, chat.seen);
  render();
}

/** A new chat announced on the stream (`event: chat`). */
export function add(c) {
  if (!c || chats.has(c.id)) return;
  chats.set(c.id, chatFromApi(c, 0));
  render();
}

// A chat as the page keeps it, from the API's chat object.
function chatFromApi(c, lastRead) {
  return {
    id: c.id,
    type: c.type,
    name: c.name,
    participants: c.participants || [],
    last_message: c.last_message,
    unread: c.unread || 0,
    // Others' messages this page counted unread as they came (ids): a read marker the server
    // counted before they came must not take them off the count.
    counted: [],
    seen: c.last_message ? c.last_message.id : 0,
    lastRead,
  };
}

/** Someone came or went (`event: presence`). */
export function presence(change) {
  if (!change) return;
  presenceHeard.set(change.user_id, { online: Boolean(change.online), at: ++presenceClock });
  for (const chat of chats.values()) {
    for (const p of chat.participants) if (p.id === change.user_id) p.online = Boolean(change.online);
  }
  render();
  emit("presence", change);
}

/** A message from the stream, a poll or our own post: counted, then announced (`fresh`: newer
than any this chat had, so not one heard of before). */
export function receive(m) {
  const chat = chats.get(m.chat_id);
  if (!chat) {
    reloadSoon(); // a chat we have not heard of yet
    return;
  }
  const fresh = m.id > chat.seen;
  if (fresh) {
    chat.seen = m.id;
    chat.last_message = m;
    if (m.sender_id !== me().id && m.id > chat.lastRead) {
      if (isReading(chat.id)) markRead(chat.id, m.id);
      else {
        chat.unread += 1;
        chat.counted.push(m.id);
      }
    }
    render();
  }
  emit("message", { message: m, chat, fresh });
}

// -- the selected chat and read markers -----------------------------------------------

export function selected() {
  return selectedId;
}

export function select(id) {
  selectedId = id;
  render();
}

/** Whether the person is looking at this chat right now. */
export function isReading(chatId) {
  return chatId === selectedId && document.visibilityState === "visible";
}

export function markRead(chatId, id) {
  const chat = chats.get(chatId);
  if (chat) {
    chat.unread = 0;
    chat.counted = [];
    render();
  }
  if (!id || id <= (readSent.get(chatId) || 0)) return;
  readPending.set(chatId, Math.max(id, readPending.get(chatId) || 0));
  if (!readTimer) readTimer = setTimeout(flushReads, READ_DELAY_MS);
}

async function flushReads() {
  readTimer = null;
  const pending = [...readPending];
  readPending.clear();
  for (const [chatId, id] of pending) {
    try {
      const marker = await api("POST", `/api/chats/${chatId}/read`, { last_read_id: id });
      readSent.set(chatId, Math.max(marker.last_read_id, readSent.get(chatId) || 0));
      applyRead(marker);
    } catch (err) {
      if (await handleAuth(err)) return;
      // not stored: the next message or chat list in this chat asks again
    }
  }
}

/** A read marker: ours, from another tab of ours, or a DM partner's (`event: read`). */
export function applyRead(marker) {
  const chat = marker && chats.get(marker.chat_id);
  if (!chat) return;
  if (marker.user_id !== undefined && marker.user_id !== me().id) {
    partnerRead(chat, marker);
    return;
  }
  chat.lastRead = Math.max(chat.lastRead, marker.last_read_id);
  chat.counted = chat.counted.filter((id) => id > chat.lastRead);
  if (isReading(chat.id) || marker.last_read_id >= chat.seen) {
    chat.unread = 0;
    chat.counted = [];
  } else if (typeof marker.unread === "number") {
    // The server counted when it answered: a message that came after is still unread.
    chat.unread = Math.max(marker.unread, chat.counted.length);
  }
  render();
}

/** How far a DM's partner has read: kept on the participant, as chat lists give it. */
function partnerRead(chat, marker) {
  const other = chat.participants.find((p) => p.id === marker.user_id);
  if (!other || (other.last_read_id || 0) >= marker.last_read_id) return;
  other.last_read_id = marker.last_read_id;
  emit("seen", chat);
}

// -- drawing the list ------------------------------------------------------------------

export function chatName(chat) {
  if (chat.type === "general") return chat.name || "General";
  const others = chat.participants.filter((p) => p.id !== me().id);
  return others.length ? others.map((p) => p.username).join(", ") : chat.name || "Conversación";
}

const ONLINE = "En línea";

/** A DM partner's presence in words; nothing is claimed while the page is not live. */
export function presenceText(other) {
  if (!isLive()) return "Sin conexión: estado desconocido";
  return other.online ? ONLINE : "Fuera de línea";
}

/** The other person of a DM; null for General. */
export function partner(chat) {
  if (chat.type !== "dm") return null;
  return chat.participants.find((p) => p.id !== me().id) || null;
}

function sortedChats() {
  const rank = (c) => (c.type === "general" ? 0 : 1);
  return [...chats.values()].sort((a, b) => rank(a) - rank(b) || b.seen - a.seen || a.id - b.id);
}

function preview(chat) {
  const m = chat.last_message;
  if (!m) return "Sin mensajes";
  const who = m.sender_id === me().id ? "Tú: " : chat.type === "general" ? (m.username || "?") + ": " : "";
  return who + m.contenido.replace(/\s+/g, " ").slice(0, 120);
}

function chatItem(chat) {
  const name = chatName(chat);
  const button = document.createElement("button");
  button.type = "button";
  button.className = "chat " + chat.type + (chat.unread > 0 ? " sin-leer" : "");
  button.dataset.chatId = String(chat.id);
  button.setAttribute("aria-current", chat.id === selectedId ? "true" : "false");
  const avatar = span("avatar", (Array.from(name)[0] || "?").toUpperCase());
  const other = partner(chat);
  if (other) {
    const status = presenceText(other);
    const dot = span("punto" + (status === ONLINE ? " en-linea" : ""));
    dot.title = status;
    dot.setAttribute("aria-label", status);
    avatar.appendChild(dot);
  }
  const typing = isTyping(chat.id);
  button.append(
    avatar,
    span("nombre", name),
    span("cuando", chat.last_message ? when(chat.last_message.timestamp) : ""),
    span(typing ? "vista escribiendo" : "vista", typing ? "escribiendo…" : preview(chat)),
  );
  if (chat.unread > 0) {
    const badge = span("insignia", chat.unread > 99 ? "99+" : String(chat.unread));
    badge.setAttribute("aria-label", chat.unread + " sin leer");
    button.appendChild(badge);
  }
  button.addEventListener("click", () => emit("open", chat.id));
  const item = document.createElement("li");
  item.appendChild(button);
  return item;
}

export function render() {
  list.replaceChildren(...sortedChats().map(chatItem));
  emit("chats");
  if (nextCursor !== null && nearEnd()) setTimeout(loadMore); // the pane is not full yet
}
