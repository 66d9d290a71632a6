// The search box over the chat list: people by the start of their name (the user's DMs) and
// messages by their words, in the chats the user may read. Results replace the list while the
// box has text; the words found are marked in the results, as text (never HTML).
//
// State (this module is its only writer): `asked`, a number that grows with every search, so
// that an answer to an older one (the person kept typing) is dropped.

import { $, span } from "./dom.js";
import { api } from "./api.js";
import { emit, on } from "./events.js";
import { handleAuth, me } from "./session.js";
import { when } from "./dates.js";
import * as chats from "./chats.js";

const TYPING_PAUSE_MS = 250; // a search goes out once the person pauses
const LIMIT = 20;
const MIN_WORD = 3; // shorter words are not in the server's full-text index

const box = $("buscar");
const results = $("resultados");
const list = $("chats");

let asked = 0;
let timer = null;

on("logout", () => clear());
box.addEventListener("input", () => {
  clearTimeout(timer);
  timer = setTimeout(() => search(box.value.trim()), TYPING_PAUSE_MS);
});
box.addEventListener("keydown", (event) => {
  if (event.key === "Escape") clear();
});

function clear() {
  clearTimeout(timer);
  asked += 1;
  box.value = "";
  show(false);
}

function show(searching) {
  results.hidden = !searching;
  list.hidden = searching;
}

/** Letters-and-digits words of a text, folded like the server compares them (case, accents). */
function fold(text) {
  return text.normalize("NFD").replace(/\p{M}/gu, "").toLowerCase();
}

function wordsOf(text) {
  return text.match(/[\p{L}\p{N}]+/gu) || [];
}

async function search(q) {
  const mine = ++asked;
  if (!q) {
    show(false);
    return;
  }
  const words = wordsOf(q).filter((w) => w.length >= MIN_WORD);
  try {
    const [people, found] = await Promise.all([
      api("GET", `/api/chats?limit=${LIMIT}&q=${encodeURIComponent(q)}`),
      words.length ? api("GET", `/api/search?limit=${LIMIT}&q=${encodeURIComponent(q)}`) : null,
    ]);
    if (mine !== asked) return; // the person kept typing
    chats.addFromApi(people.chats);
    render(q, people.chats, found ? found.messages : [], words);
  } catch (err) {
    if (mine === asked && !(await handleAuth(err))) render(q, [], [], words, "No se pudo buscar.");
  }
}

function heading(text) {
  const item = document.createElement("li");
  item.className = "resultado-titulo";
  item.textContent = text;
  return item;
}

function note(text) {
  const item = document.createElement("li");
  item.className = "resultado-nota";
  item.textContent = text;
  return item;
}

function render(q, people, messages, words, failure) {
  const items = [heading("Personas")];
  if (!people.length) items.push(note("Nadie con ese nombre."));
  for (const found of people) {
    items.push(result(chats.chatName(chats.get(found.id) || found), [fold(q)], "", () => open(found.id)));
  }
  items.push(heading("Mensajes"));
  if (failure) items.push(note(failure));
  else if (!words.length) items.push(note(`Escribe una palabra de ${MIN_WORD} letras o más.`));
  else if (!messages.length) items.push(note("Nada escrito con esas palabras."));
  const folded = words.map(fold);
  for (const m of messages) {
    const where = chats.get(m.chat_id);
    const title = where ? chats.chatName(where) : m.username || "?";
    items.push(result(title, [], m, () => openMessage(m), folded));
  }
  results.replaceChildren(...items);
  show(true);
}

/** A result: a title and, for a message, its text with the searched words marked. */
function result(title, titleWords, message, onClick, words = []) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "resultado";
  const name = span("nombre");
  name.append(...marked(title, titleWords, true));
  button.appendChild(name);
  if (message) {
    button.appendChild(span("cuando", when(message.timestamp)));
    const text = span("vista");
    const who = message.sender_id === me().id ? "Tú: " : (message.username || "?") + ": ";
    text.append(who, ...marked(message.contenido.replace(/\s+/g, " "), words, false));
    button.appendChild(text);
  }
  button.addEventListener("click", onClick);
  const item = document.createElement("li");
  item.appendChild(button);
  return item;
}

/** Text nodes and <mark> elements: the words of `text` that start with a searched word (for a
 * name, only its first such word). Built with textContent only. */
function marked(text, words, nameStart) {
  const parts = [];
  let marking = words.length > 0;
  for (const piece of text.split(/([\p{L}\p{N}]+)/gu)) {
    if (!piece) continue;
    const key = fold(piece);
    if (marking && words.some((w) => key.startsWith(w))) {
      const mark = document.createElement("mark");
      mark.textContent = piece;
      parts.push(mark);
      marking = !nameStart;
    } else parts.push(piece);
  }
  return parts;
}

function open(chatId) {
  clear();
  emit("open", chatId);
}

/** A message's chat; one not loaded in the list yet is found by its sender's name (a DM). */
async function openMessage(m) {
  if (!chats.get(m.chat_id) && m.username && m.sender_id !== me().id) {
    try {
      const answer = await api("GET", `/api/chats?limit=${LIMIT}&q=${encodeURIComponent(m.username)}`);
      chats.addFromApi(answer.chats.filter((c) => c.id === m.chat_id));
    } catch (err) {
      if (await handleAuth(err)) return;
    }
  }
  if (chats.get(m.chat_id)) open(m.chat_id);
}
