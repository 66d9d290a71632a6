// Being told: the unread total in the tab title ("(3) Chat"), and, while the page is hidden, a
// desktop notification for each new message of someone else (with an optional short beep).
// Permission is asked only when the person clicks "Activar avisos", never on load; the sound
// choice is remembered in this browser (localStorage).
//
// State: the notifications shown (closed when their chat is opened) and the audio context,
// made on a click so that browsers let it play.

import { $ } from "./dom.js";
import { emit, on } from "./events.js";
import { me } from "./session.js";
import * as chats from "./chats.js";

const TITLE = "Chat";
const SOUND_KEY = "chat.sonido";
const DECLINED_KEY = "chat.sin-avisos"; // "Ahora no": not offered again in this browser
const PREVIEW_CHARS = 100;
const BEEP = { hz: 880, seconds: 0.18, volume: 0.08 };

const el = { permiso: $("permiso"), avisos: $("avisos"), sinAvisos: $("sin-avisos"), sonido: $("sonido") };

let shown = new Map(); // chat id -> its Notification
let audio = null;

on("chats", () => {
  const total = chats.unreadTotal();
  document.title = total ? `(${total > 99 ? "99+" : total}) ${TITLE}` : TITLE;
});
on("logout", () => {
  document.title = TITLE;
  for (const notification of shown.values()) notification.close();
  shown = new Map();
});
on("open", (chatId) => shown.get(chatId)?.close());

on("message", ({ message, chat, fresh }) => {
  if (!fresh || message.sender_id === me().id || document.visibilityState === "visible") return;
  notify(message, chat);
  if (soundOn()) beep();
});

function notify(message, chat) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  const sender = message.username || "Alguien";
  const title = chat.type === "general" ? `${sender} en ${chats.chatName(chat)}` : sender;
  const notification = new Notification(title, {
    body: message.contenido.replace(/\s+/g, " ").slice(0, PREVIEW_CHARS),
    tag: `chat-${chat.id}`, // a newer one of the same chat takes the older one's place
    icon: "/static/favicon.svg",
  });
  notification.onclick = () => {
    window.focus();
    notification.close();
    emit("open", chat.id);
  };
  notification.onclose = () => {
    if (shown.get(chat.id) === notification) shown.delete(chat.id);
  };
  shown.set(chat.id, notification);
}

// -- permission and sound -------------------------------------------------------------

/** Show "Activar avisos" while the browser has not been asked yet (unless declined here). */
function offerPermission() {
  const undecided = "Notification" in window && Notification.permission === "default";
  el.permiso.hidden = !undecided || localStorage.getItem(DECLINED_KEY) === "1";
}

el.sinAvisos.addEventListener("click", () => {
  localStorage.setItem(DECLINED_KEY, "1");
  offerPermission();
});

el.avisos.addEventListener("click", async () => {
  try {
    await Notification.requestPermission();
  } finally {
    offerPermission();
  }
});

function soundOn() {
  return localStorage.getItem(SOUND_KEY) === "1";
}

function renderSound() {
  const on = soundOn();
  el.sonido.setAttribute("aria-pressed", String(on));
  el.sonido.title = on ? "Sonido de avisos: activado" : "Sonido de avisos: desactivado";
}

el.sonido.addEventListener("click", () => {
  localStorage.setItem(SOUND_KEY, soundOn() ? "0" : "1");
  renderSound();
  if (soundOn()) beep(); // also unlocks audio: browsers allow it after a click
});

renderSound();
offerPermission();

/** A short generated tone: no sound file to ship. */
function beep() {
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!Context) return;
  audio = audio || new Context();
  const start = audio.currentTime;
  const tone = audio.createOscillator();
  const gain = audio.createGain();
  tone.frequency.value = BEEP.hz;
  gain.gain.setValueAtTime(BEEP.volume, start);
  gain.gain.exponentialRampToValueAtTime(0.0001, start + BEEP.seconds);
  tone.connect(gain).connect(audio.destination);
  tone.start(start);
  tone.stop(start + BEEP.seconds);
}
