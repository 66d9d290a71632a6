// The open conversation: its messages (in id order, each once, with a separator per Lima day),
// older pages on scrolling up, the title (who, and whether they are online or typing), "Visto"
// under the last own message a DM partner has read, and the composer.
//
// State: what is shown of the chat selected in the chat list (`shown`, oldest and newest id,
// whether older messages exist), with a generation bumped whenever the pane is cleared so a
// late page of an earlier chat is dropped.

import { $, span } from "./dom.js";
import { api, ApiError } from "./api.js";
import { on } from "./events.js";
import { handleAuth, me } from "./session.js";
import * as chats from "./chats.js";
import { dayKey, dayLabel, fullDate, hour } from "./dates.js";
import * as typing from "./typing.js";
import { isLive } from "./connection.js";

const PAGE = 50; // messages per history page
const POLL_PAGE = 200; // the API's largest page
const NEAR_BOTTOM_PX = 80; // closer than this to the end: follow new messages
const NEAR_TOP_PX = 120; // closer than this to the top: load older messages
const OPEN_KEY = "chat.abierto";
const LONG_PRESS_MS = 500; // a touch held this long shows a message's full date

const el = {
  app: $("app"),
  volver: $("volver"),
  titulo: $("titulo"),
  subtitulo: $("subtitulo"),
  mensajes: $("mensajes"),
  historial: $("historial"),
  listaMensajes: $("lista-mensajes"),
  vacio: $("vacio"),
  composer: $("composer"),
  texto: $("texto"),
  enviar: $("enviar"),
  errorEnvio: $("error-envio"),
};

let openGeneration = 0;
let historyLoaded = false;
let shown = new Map(); // message id -> <li>
let oldestId = null;
let newestId = 0;
let hasOlder = false;
let loadingOlder = false;
let sending = false;

on("logout", () => {
  sessionStorage.removeItem(OPEN_KEY);
  clearConversation();
});
on("open", (id) => openChat(id));
on("message", ({ message }) => {
  if (message.chat_id === chats.selected()) showMessages([message]);
});
const renderOpenTitle = () => renderTitle(chats.get(chats.selected()));
on("presence", renderOpenTitle);
on("mode", renderOpenTitle);
on("typing", (chatId) => {
  if (chatId === chats.selected()) renderOpenTitle();
});
on("seen", (chat) => {
  if (chat.id === chats.selected()) renderSeen();
});

/** The chat this tab had open before a reload, if any. */
export function remembered() {
  return Number(sessionStorage.getItem(OPEN_KEY)) || null;
}

function clearConversation() {
  openGeneration += 1;
  shown = new Map();
  oldestId = null;
  newestId = 0;
  hasOlder = false;
  historyLoaded = false;
  el.listaMensajes.replaceChildren();
  el.historial.hidden = true;
  el.composer.hidden = true;
  el.vacio.hidden = false;
  el.errorEnvio.textContent = "";
  el.titulo.textContent = "Elige una conversación";
  el.subtitulo.textContent = "";
}

function renderTitle(chat) {
  if (!chat) return;
  el.titulo.textContent = chats.chatName(chat);
  const other = chats.partner(chat);
  const typingNow = typing.isTyping(chat.id);
  // While the page is not live, the connection state beside the title speaks instead.
  const presence = other ? (isLive() ? chats.presenceText(other) : "") : "Todos los usuarios";
  el.subtitulo.textContent = typingNow ? "escribiendo…" : presence;
  el.subtitulo.classList.toggle("escribiendo", typingNow);
}

export async function openChat(id) {
  const chat = chats.get(id);
  if (!chat) return;
  clearConversation();
  const generation = openGeneration;
  sessionStorage.setItem(OPEN_KEY, String(id));
  el.app.dataset.view = "chat";
  el.vacio.hidden = true;
  el.composer.hidden = false;
  renderTitle(chat);
  chats.select(id);
  note("Cargando mensajes…");
  try {
    const answer = await api("GET", `/api/messages?chat_id=${id}&limit=${PAGE}`);
    if (generation !== openGeneration) return;
    showMessages(answer.messages);
    hasOlder = answer.messages.length === PAGE;
    historyLoaded = true;
    scrollToEnd();
    if (chats.isReading(id)) chats.markRead(id, Math.max(newestId, chat.seen));
    fillScreen();
  } catch (err) {
    if (await handleAuth(err)) return;
    if (generation === openGeneration) note("No se pudieron cargar los mensajes.");
    return;
  }
  noteHistory();
  if (window.matchMedia("(min-width: 721px)").matches) el.texto.focus();
}

/** Read the open chat again from the server (after the stream said it was too far behind). */
export function reload() {
  const id = chats.selected();
  if (id !== null) openChat(id);
}

el.volver.addEventListener("click", () => {
  sessionStorage.removeItem(OPEN_KEY);
  clearConversation();
  el.app.dataset.view = "lista";
  chats.select(null);
});

document.addEventListener("visibilitychange", () => {
  const id = chats.selected();
  if (id === null || document.visibilityState !== "visible") return;
  const chat = chats.get(id);
  if (chat && chat.unread > 0) chats.markRead(chat.id, Math.max(chat.seen, newestId));
});

function note(text) {
  el.historial.textContent = text;
  el.historial.hidden = false;
}

function noteHistory() {
  if (hasOlder) note("Desplázate hacia arriba para ver mensajes anteriores.");
  else if (shown.size) note("Inicio de la conversación.");
  else note("Aún no hay mensajes. ¡Escribe el primero!");
}

function nearEnd() {
  const box = el.mensajes;
  return box.scrollHeight - box.scrollTop - box.clientHeight < NEAR_BOTTOM_PX;
}

function scrollToEnd() {
  el.mensajes.scrollTop = el.mensajes.scrollHeight;
}

/** Add messages to the open chat in time order (then id), each once: copied legacy messages
 * have ids below 0 and sit among the new ones by their time, as history pages list them. */
function showMessages(messages) {
  const follow = nearEnd();
  const openId = chats.selected();
  let mine = false;
  for (const m of messages) {
    if (m.chat_id !== openId || shown.has(m.id)) continue;
    const item = messageItem(m);
    shown.set(m.id, item);
    const last = el.listaMensajes.lastElementChild;
    if (!last || comesAfter(item, last)) {
      el.listaMensajes.appendChild(item);
    } else {
      const after = [...el.listaMensajes.children].find((node) => comesAfter(node, item));
      el.listaMensajes.insertBefore(item, after || null);
    }
    newestId = Math.max(newestId, m.id);
    // Paging back continues from the first message in time, which need not have the lowest id.
    oldestId = Number(el.listaMensajes.querySelector(".msg").dataset.id);
    mine = mine || m.sender_id === me().id;
  }
  renderDays();
  renderSeen();
  if (historyLoaded && (follow || mine)) scrollToEnd();
  if (historyLoaded && !hasOlder) noteHistory();
}

/** Whether message item `a` comes after `b`: by time, then by id (day separators never do). */
function comesAfter(a, b) {
  const at = Date.parse(a.dataset.time);
  const bt = Date.parse(b.dataset.time);
  return at > bt || (at === bt && Number(a.dataset.id) > Number(b.dataset.id));
}

function messageItem(m) {
  const item = document.createElement("li");
  item.className = "msg" + (m.sender_id === me().id ? " mio" : "");
  item.dataset.id = String(m.id);
  item.dataset.day = dayKey(m.timestamp);
  item.dataset.time = m.timestamp;
  const meta = document.createElement("div");
  meta.className = "meta";
  const time = document.createElement("time");
  time.dateTime = m.timestamp;
  time.textContent = hour(m.timestamp);
  time.title = fullDate(m.timestamp); // on hover; a long press shows it too (.con-fecha)
  meta.append(
    span("autor", m.sender_id === me().id ? "Tú" : m.username || "?"),
    time,
    span("fecha-completa", time.title),
  );
  const text = document.createElement("div");
  text.className = "texto";
  text.textContent = m.contenido;
  item.append(meta, text);
  return item;
}

/** One separator before the first message of each Lima day (redrawn: messages come in any order). */
function renderDays() {
  for (const node of el.listaMensajes.querySelectorAll(".dia")) node.remove();
  let previous = null;
  for (const item of [...el.listaMensajes.children]) {
    if (item.dataset.day !== previous) el.listaMensajes.insertBefore(dayItem(item.dataset.time), item);
    previous = item.dataset.day;
  }
}

function dayItem(iso) {
  const item = document.createElement("li");
  item.className = "dia";
  item.setAttribute("role", "separator");
  item.appendChild(span("etiqueta", dayLabel(iso)));
  return item;
}

/** "Visto" under the last of our messages that a DM's partner has read. */
function renderSeen() {
  for (const node of el.listaMensajes.querySelectorAll(".visto")) node.remove();
  const chat = chats.get(chats.selected());
  const other = chat && chats.partner(chat);
  const upto = (other && other.last_read_id) || 0;
  let last = 0;
  for (const [id, item] of shown) if (id <= upto && id > last && item.classList.contains("mio")) last = id;
  if (last) shown.get(last).appendChild(span("visto", "Visto"));
}

// A long press on a message (touch has no hover) shows its full date under it.
let pressTimer = null;
el.listaMensajes.addEventListener("pointerdown", (ev) => {
  const item = ev.target.closest(".msg");
  if (!item || ev.pointerType === "mouse") return;
  clearTimeout(pressTimer);
  pressTimer = setTimeout(() => item.classList.toggle("con-fecha"), LONG_PRESS_MS);
});
for (const type of ["pointerup", "pointercancel", "pointerleave"]) {
  el.listaMensajes.addEventListener(type, () => clearTimeout(pressTimer));
}

async function loadOlder() {
  if (!hasOlder || loadingOlder || oldestId === null || !historyLoaded) return;
  loadingOlder = true;
  const chatId = chats.selected();
  const generation = openGeneration;
  const box = el.mensajes;
  note("Cargando mensajes anteriores…");
  try {
    const path = `/api/messages?chat_id=${chatId}&before_id=${oldestId}&limit=${PAGE}`;
    const answer = await api("GET", path);
    if (generation !== openGeneration) return;
    const fromEnd = box.scrollHeight - box.scrollTop;
    showMessages(answer.messages);
    hasOlder = answer.messages.length === PAGE;
    box.scrollTop = box.scrollHeight - fromEnd; // the same messages stay in view
  } catch (err) {
    await handleAuth(err);
  } finally {
    loadingOlder = false;
    if (generation === openGeneration) noteHistory();
  }
  fillScreen();
}

/** With too few messages to scroll, older ones load at once. */
function fillScreen() {
  if (hasOlder && el.mensajes.scrollHeight <= el.mensajes.clientHeight) loadOlder();
}

el.mensajes.addEventListener("scroll", () => {
  if (el.mensajes.scrollTop < NEAR_TOP_PX) loadOlder();
});

/** While polling: the open chat's messages after the newest shown. */
export async function fetchNewer() {
  const chatId = chats.selected();
  if (chatId === null || !historyLoaded) return;
  for (;;) {
    const path = `/api/messages?chat_id=${chatId}&after_id=${newestId}&limit=${POLL_PAGE}`;
    const answer = await api("GET", path);
    if (chats.selected() !== chatId) return;
    answer.messages.forEach(chats.receive);
    if (answer.messages.length < POLL_PAGE) return;
  }
}

// -- writing -------------------------------------------------------------------------

el.texto.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    el.composer.requestSubmit();
  }
});

el.texto.addEventListener("input", () => {
  el.texto.style.height = "auto";
  el.texto.style.height = el.texto.scrollHeight + 2 + "px";
  if (el.texto.value.trim()) typing.typed(chats.get(chats.selected()));
});

el.composer.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = el.texto.value;
  const chatId = chats.selected();
  if (!text.trim() || chatId === null || sending) return;
  sending = true;
  el.enviar.disabled = true;
  el.errorEnvio.textContent = "";
  try {
    const answer = await api("POST", "/api/messages", { chat_id: chatId, contenido: text });
    if (chats.selected() === chatId) {
      el.texto.value = "";
      el.texto.style.height = "";
    }
    chats.receive(answer.message);
  } catch (err) {
    if (!(await handleAuth(err))) el.errorEnvio.textContent = sendError(err);
  } finally {
    sending = false;
    el.enviar.disabled = false;
  }
});

function sendError(err) {
  if (!(err instanceof ApiError)) return "Sin conexión: no se pudo enviar. Inténtalo de nuevo.";
  if (err.status === 429) return "Estás enviando demasiado rápido; espera un momento.";
  if (err.status === 400) return "No se pudo enviar: el texto no es válido (¿demasiado largo?).";
  if (err.status === 403) return "No participas en esta conversación.";
  return "No se pudo enviar (" + err.status + ").";
}
